"""Batches of token sequences, padded for a forward pass."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

T = TypeVar("T")
Side = Literal["left", "right"]


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of `items` of at most `size` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's padding id, or its end-of-sequence id when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad(sequences: Sequence[Sequence[int]], value: int, side: Side, device: torch.device | str = "cpu") -> torch.Tensor:
    """The sequences as one [batch, longest] tensor, filled with `value` on `side`."""
    longest = max(len(s) for s in sequences)
    rows = [[value] * (longest - len(s)) + list(s) if side == "left" else list(s) + [value] * (longest - len(s))
            for s in sequences]
    return torch.tensor(rows, dtype=torch.long, device=device)


def padded_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: Side,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask (1 on real tokens) of sequences padded on `side`."""
    mask = pad([[1] * len(s) for s in sequences], 0, side, device)
    return pad(sequences, pad_id, side, device), mask
