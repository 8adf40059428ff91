"""How a Mixture-of-Experts model spreads its tokens over its experts."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from barctl.errors import BarctlError
from barctl.evaluate.batching import chunks, pad_token_id, padded_batch


def routing_shares(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], *,
                   batch_size: int = 8, max_length: int = 512) -> dict[str, Any]:
    """The share of routing weight and of top-1 choices each expert gets over the tokens of `texts`.

    `layers[l][e]`: expert e's routing probability (softmax of layer l's router logits)
    averaged over all tokens; `mean`: that averaged over layers; `top1[e]`: the share of
    (token, layer) pairs whose most probable expert is e; `tokens`: tokens counted.
    Padding is not counted; each text keeps its first `max_length` tokens. For the MoE
    classes of transformers v5 that report router logits (Mixtral, FlexOlmo); a model
    without a router raises BarctlError.
    """
    encoded = [ids for ids in (tokenizer(text)["input_ids"][:max_length] for text in texts) if ids]
    if not encoded:
        raise BarctlError("routing shares: no tokens to route")
    pad_id = pad_token_id(tokenizer)
    weights, winners = [], []  # per batch: summed probabilities [layers, experts], top-1 counts [experts]
    model.eval()
    with torch.inference_mode():
        for batch in chunks(encoded, batch_size):
            input_ids, mask = padded_batch(batch, pad_id, "right", model.device)
            probs = _router_probs(model, input_ids, mask)
            weights.append(probs.sum(dim=1))
            winners.append(torch.nn.functional.one_hot(probs.argmax(dim=-1), probs.shape[-1]).sum(dim=(0, 1)))
    tokens = sum(len(ids) for ids in encoded)
    layers = torch.stack(weights).sum(dim=0) / tokens
    top1 = torch.stack(winners).sum(dim=0) / (tokens * layers.shape[0])
    return {"layers": layers.tolist(), "mean": layers.mean(dim=0).tolist(), "top1": top1.tolist(), "tokens": tokens}


def _router_probs(model: PreTrainedModel, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Routing probabilities [layers, real tokens, experts] of one padded batch."""
    # logits_to_keep=1: the LM head's logits are not needed, only the routers'
    output = model(input_ids=input_ids, attention_mask=mask, output_router_logits=True, logits_to_keep=1)
    router_logits = getattr(output, "router_logits", None)
    if not router_logits:
        raise BarctlError(f"routing shares: {type(model).__name__} reports no router logits; it is not a "
                          "Mixture-of-Experts model")
    # each layer's logits are [batch * sequence, experts], padding positions included
    real = mask.reshape(-1).bool()
    return torch.stack([logits[real].float().softmax(dim=-1) for logits in router_logits])
