"""Negative log-likelihood of a model on the target tokens of text, prompt-completion or chat data.

Rows are tokenized as TRL's SFT trainer tokenizes them, so that the numbers compare with
training losses: plain text and plain completions end with the end-of-sequence token,
a conversation goes through the chat template, and a completion starts where the
tokenized prompt and prompt + completion diverge. Sequences keep their first
`max_length` tokens, as in training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length

from barctl.errors import BarctlError
from barctl.evaluate.batching import chunks, pad, pad_token_id, padded_batch
from barctl.evaluate.generate import Prompt, chat_ids, encode_prompt
from barctl.training.sft import split_last_turn

IGNORE = -100  # label of a context token, which the loss does not count


def token_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], fmt: str, *,
               batch_size: int, max_length: int, progress: Callable[[int], None]) -> dict[str, Any]:
    """Mean negative log-likelihood per target token of `rows` in format `fmt`.

    Targets: every token of `text` after the first, end-of-sequence included; the
    completion of `prompt_completion`; the last assistant turn of `messages` (earlier
    turns are context, as in barctl's SFT).
    Returns `loss`, `tokens` (targets counted), `truncated` (rows cut to `max_length`) and
    `rows`: per row, [summed negative log-likelihood, target tokens].
    `progress` gets the number of rows done after each batch.
    """
    examples = [targets(tokenizer, row, fmt) for row in rows]
    truncated = sum(len(ids) > max_length for ids, _ in examples)
    examples = [(ids[:max_length], labels[:max_length]) for ids, labels in examples]
    pad_id = pad_token_id(tokenizer)
    per_row: list[list[float]] = [[0.0, 0] for _ in examples]
    # batched by length, as generation is, so that a batch pads little; results keep the rows' order
    by_length = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    done = 0
    model.eval()
    with torch.inference_mode():
        for batch in chunks(by_length, batch_size):
            input_ids, mask = padded_batch([examples[i][0] for i in batch], pad_id, "right", model.device)
            labels = pad([examples[i][1] for i in batch], IGNORE, "right", model.device)[:, 1:]
            nll = _summed_nll(model, input_ids, mask, labels)
            for index, value, count in zip(batch, nll.tolist(), (labels != IGNORE).sum(dim=1).tolist()):
                per_row[index] = [value, count]
            done += len(batch)
            progress(done)
    tokens = sum(count for _, count in per_row)
    if not tokens:
        raise BarctlError(f"loss: no target tokens to score in {len(rows)} rows (max_length {max_length})")
    return {"loss": sum(value for value, _ in per_row) / tokens, "tokens": tokens, "truncated": truncated,
            "rows": per_row}


def _summed_nll(model: PreTrainedModel, input_ids: torch.Tensor, mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed negative log-likelihood of its target tokens (`labels` shifted, IGNORE elsewhere).

    The LM head runs on the target positions only: a batch's full logits (rows x tokens x vocabulary, in
    fp32) would take gigabytes for a 49k vocabulary at batch 50, and most positions are context.
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, :-1]
    scored = labels != IGNORE
    head = cast(torch.nn.Module, model.get_output_embeddings())
    logits = head(hidden[scored]).float()
    per_token = F.cross_entropy(logits, labels[scored], reduction="none")
    rows = scored.nonzero()[:, 0]
    return torch.zeros(labels.shape[0], dtype=per_token.dtype, device=per_token.device).index_add_(0, rows, per_token)


def targets(tokenizer: PreTrainedTokenizerBase, row: dict[str, Any], fmt: str) -> tuple[list[int], list[int]]:
    """Token ids of one row and its labels: the id where the loss counts, IGNORE where it does not."""
    if fmt == "text":
        ids = tokenizer(_with_eos(tokenizer, row["text"]))["input_ids"]
        return ids, list(ids)
    if fmt == "messages":
        row = split_last_turn(row)
    full_ids = _full_ids(tokenizer, row["prompt"], row["completion"])
    start = common_prefix_length(encode_prompt(tokenizer, row["prompt"]), full_ids)
    return full_ids, [IGNORE] * start + full_ids[start:]


def _full_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: Prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt + _with_eos(tokenizer, cast(str, completion)))["input_ids"]
    return chat_ids(tokenizer, prompt + cast(list[dict], completion))


def _with_eos(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    eos = tokenizer.eos_token
    return text if eos is None or text.endswith(eos) else text + eos
