"""How a Mixture-of-Experts model spreads its tokens over its experts."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from barctl.errors import BarctlError
from barctl.evaluate.batching import chunks, pad_token_id, padded_batch
from barctl.model.router_weights import captured_router_logits


def routing_shares(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], *,
                   batch_size: int = 8, max_length: int = 512) -> dict[str, Any]:
    """The share of routing weight and of top-1 choices each expert gets over the tokens of `texts`.

    Routing probabilities are the softmax of each layer's router logits, computed from the
    router's own input and weight (see `captured_router_logits`), so the report is the same
    on every transformers version. `layers[l][e]`: expert e's probability at layer l averaged
    over all tokens; `mean`: that averaged over layers; `top1[e]`: the share of (token, layer)
    pairs whose most probable expert is e; `entropy`: the mean over (token, layer) pairs of
    the routing distribution's entropy, in nats (0: one expert takes all; `max_entropy`,
    ln(experts): uniform); `tokens`: tokens counted. Padding is not counted; each text keeps
    its first `max_length` tokens. A model without a router raises BarctlError.
    """
    encoded = [ids for ids in (tokenizer(text)["input_ids"][:max_length] for text in texts) if ids]
    if not encoded:
        raise BarctlError("routing shares: no tokens to route")
    pad_id = pad_token_id(tokenizer)
    weights, winners, entropy = [], [], 0.0  # summed probabilities [layers, experts], top-1 counts [experts]
    model.eval()
    with torch.inference_mode(), captured_router_logits(model) as captured:
        for batch in chunks(encoded, batch_size):
            input_ids, mask = padded_batch(batch, pad_id, "right", model.device)
            captured.clear()
            # logits_to_keep=1: the LM head's logits are not needed, only the routers'
            model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1)
            real = mask.reshape(-1).bool()  # each layer's logits are [batch * sequence, experts]
            log_probs = torch.stack([logits[real] for logits in captured]).log_softmax(dim=-1)
            probs = log_probs.exp()
            weights.append(probs.sum(dim=1))
            winners.append(torch.nn.functional.one_hot(probs.argmax(dim=-1), probs.shape[-1]).sum(dim=(0, 1)))
            entropy -= float((probs * log_probs).sum())
    tokens = sum(len(ids) for ids in encoded)
    layers = torch.stack(weights).sum(dim=0) / tokens
    pairs = tokens * layers.shape[0]
    top1 = torch.stack(winners).sum(dim=0) / pairs
    return {"layers": layers.tolist(), "mean": layers.mean(dim=0).tolist(), "top1": top1.tolist(),
            "entropy": entropy / pairs, "max_entropy": math.log(layers.shape[1]), "tokens": tokens}
