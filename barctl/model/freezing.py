"""Trainable parameter groups of a branched MoE, and the guard that keeps the anchor slot unchanged.

Groups (Mixtral and FlexOlmo names, as `from_pretrained` gives them):
`expert` (`mlp.experts.*`), `router` (`mlp.gate`), `embeddings` (`embed_tokens`),
`lm_head`, `attention` (`self_attn`, q/k norms included), `norms` (layer norms and the
final norm); `all` is every group.

All experts of a layer share one tensor, so slot 0 (the anchor's FFN) cannot be frozen
with `requires_grad`. It is protected twice: a gradient hook zeroes its gradient (so
clipping and Adam's moments never see it), and `AnchorGuard` writes it back after every
optimiser step, because AdamW's decoupled weight decay shrinks it even with a zero
gradient. `check_anchor_slot` then verifies it bitwise.

Tied embeddings (`tie_word_embeddings`): `embed_tokens` and `lm_head` are one tensor, so
choosing either group trains it (and so both); it is counted once. `tied_note` says so.

Nothing here imports torch at module level: `trainable_parameter_count` serves `plan`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Union

from barctl.errors import BarctlError
from barctl.model.families import moe_family_for_moe_config

if TYPE_CHECKING:
    import torch
    from torch import nn

GROUPS = ("expert", "router", "embeddings", "lm_head", "attention", "norms")

_RULES = (
    ("expert", re.compile(r"\.mlp\.experts\.")),
    ("router", re.compile(r"\.mlp\.gate\.")),
    ("embeddings", re.compile(r"(^|\.)embed_tokens\.")),
    ("lm_head", re.compile(r"^lm_head\.")),
    ("attention", re.compile(r"\.self_attn\.")),
    ("norms", re.compile(r"norm\.(weight|bias)$")),
)
_FUSED_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def group_of(name: str) -> str:
    """The group of a parameter name; BarctlError for a name no group claims."""
    for group, pattern in _RULES:
        if pattern.search(name):
            return group
    raise BarctlError(f"parameter {name!r} belongs to no trainable group ({', '.join(GROUPS)})")


def expand(groups: Iterable[str]) -> set[str]:
    """The groups named, with `all` expanded."""
    chosen = set(groups)
    unknown = chosen - set(GROUPS) - {"all"}
    if unknown:
        raise BarctlError(f"unknown trainable group(s) {', '.join(sorted(unknown))}; choose from all, {', '.join(GROUPS)}")
    return set(GROUPS) if "all" in chosen else chosen


def tied_note(config: Mapping, groups: Iterable[str]) -> str | None:
    """A note when embeddings and lm_head are one tensor and only one of the two groups was chosen."""
    chosen = expand(groups)
    if not config.get("tie_word_embeddings") or len(chosen & {"embeddings", "lm_head"}) != 1:
        return None
    (named,) = chosen & {"embeddings", "lm_head"}
    return f"embeddings and lm_head are one tied tensor in this model: training {named} trains both"


def apply_trainable(model: nn.Module, groups: Iterable[str]) -> dict[str, int]:
    """Set `requires_grad` by group, hook the expert tensors' slot 0; trainable parameters per group.

    Expert tensors count only their trainable slots. A tied embedding tensor counts once,
    under `embeddings` when that group is chosen, else under `lm_head`.
    """
    chosen = expand(groups)
    tied = _is_tied(model)
    counts = dict.fromkeys(sorted(chosen), 0)
    for name, param in model.named_parameters():
        owners = {group_of(name)}
        if tied and owners == {"embeddings"}:
            owners.add("lm_head")
        trains = bool(owners & chosen)
        param.requires_grad_(trains)
        if not trains:
            continue
        if owners == {"expert"}:
            param.register_hook(_zero_slot0)
            counts["expert"] += param.numel() // param.shape[0] * (param.shape[0] - 1)
        else:
            counts[next(g for g in GROUPS if g in owners & chosen)] += param.numel()
    return counts


def _is_tied(model: nn.Module) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def _zero_slot0(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    grad[0] = 0
    return grad


class AnchorGuard:
    """A copy of slot 0 of every trainable expert tensor, written back by `restore()`.

    The copy stays on the parameter's device (the anchor FFN's size once more in memory):
    restoring then costs one device-local copy per optimiser step.
    """

    def __init__(self, model: nn.Module):
        self._saved = [
            (param, param.detach()[0].clone())
            for name, param in model.named_parameters()
            if param.requires_grad and group_of(name) == "expert"
        ]

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for param, slot0 in self._saved:
                param[0].copy_(slot0)


ModelOrDir = Union["nn.Module", Path, str]


def anchor_slot(model_or_dir: ModelOrDir) -> dict[str, torch.Tensor]:
    """Slot 0 of every expert tensor as `layers.<i>.<gate|up|down>` -> tensor (legacy [I,H]/[H,I] shapes)."""
    return dict(_slot0_items(model_or_dir))


def check_anchor_slot(model_or_dir: ModelOrDir, anchor_ffn: ModelOrDir | Mapping[str, torch.Tensor]) -> None:
    """BarctlError unless slot 0 of `model_or_dir` equals `anchor_ffn` bitwise.

    `anchor_ffn` is what `anchor_slot` returns, or a model or directory to read it from.
    Tensors of different dtypes must hold exactly the same values.
    """
    expected = anchor_ffn if isinstance(anchor_ffn, Mapping) else anchor_slot(anchor_ffn)
    seen = set()
    for key, tensor in _slot0_items(model_or_dir):
        seen.add(key)
        if key not in expected:
            raise BarctlError(f"anchor slot: {key} has no counterpart in the anchor")
        want = expected[key]
        if tensor.shape != want.shape:
            raise BarctlError(f"anchor slot: {key} has shape {list(tensor.shape)}, the anchor's is {list(want.shape)}")
        if not _same_bits(tensor, want):
            detail = f"max |difference| {(tensor.double() - want.double()).abs().max().item():.3g}"
            raise BarctlError(f"the anchor FFN (expert slot 0) changed in training: {key} differs ({detail})")
    missing = sorted(set(expected) - seen)
    if missing:
        raise BarctlError(f"anchor slot: the trained model lacks {', '.join(missing)}")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    if a.dtype == b.dtype:
        return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    return torch.equal(a.double(), b.double())


def _slot0_items(source: ModelOrDir) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(source, (str, Path)):
        yield from _slot0_from_dir(Path(source))
        return
    for name, param in source.named_parameters():
        yield from _slot0_fused(name, lambda p=param: p.detach())


def _slot0_from_dir(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from barctl.model.checkpoint import CheckpointReader

    with CheckpointReader(model_dir) as reader:
        family = moe_family_for_moe_config(reader.config)
        for name in reader.names():
            parsed = family.parse_expert(name)
            if parsed is not None:
                layer, slot, proj = parsed
                if slot == 0:
                    yield f"layers.{layer}.{proj}", reader.get(name)
            else:
                yield from _slot0_fused(name, lambda n=name: reader.get(n))


def _slot0_fused(name: str, get) -> Iterator[tuple[str, torch.Tensor]]:
    """Slot 0 of a fused expert tensor: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]."""
    m = _FUSED_EXPERT.match(name)
    if not m:
        return
    layer, tensor = int(m.group(1)), get()
    if m.group(2) == "down_proj":
        yield f"layers.{layer}.down", tensor[0]
    else:
        half = tensor.shape[1] // 2
        yield f"layers.{layer}.gate", tensor[0, :half]
        yield f"layers.{layer}.up", tensor[0, half:]


def group_sizes(config: Mapping) -> dict[str, int]:
    """Trainable parameters of each group of a barctl MoE, from its config.json alone.

    `expert` counts the trainable slots only; `lm_head` is 0 when tied to the embeddings.
    """
    family = moe_family_for_moe_config(dict(config))
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    layers, vocab = int(config["num_hidden_layers"]), int(config["vocab_size"])
    experts = family.num_experts(dict(config))
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = 2 * hidden * q + 2 * hidden * kv
    if config.get("attention_bias"):
        attention += q + 2 * kv + hidden
    if family.name == "flex_olmo":  # q/k norms over all heads
        attention += q + kv
    return {
        "expert": layers * (experts - 1) * 3 * hidden * inter,
        "router": layers * experts * hidden,
        "embeddings": vocab * hidden,
        "lm_head": 0 if config.get("tie_word_embeddings") else vocab * hidden,
        "attention": layers * attention,
        "norms": (2 * layers + 1) * hidden,
    }


def trainable_parameter_count(config: Mapping, groups: Iterable[str]) -> int:
    """Trainable parameters of `groups` in a barctl MoE with this config.json (torch-free, for `plan`)."""
    chosen = expand(groups)
    sizes = group_sizes(config)
    count = sum(sizes[g] for g in chosen)
    if config.get("tie_word_embeddings") and chosen & {"embeddings", "lm_head"} == {"lm_head"}:
        count += sizes["embeddings"]
    return count
