"""Trainable parameter groups of a branched MoE, and the guard that keeps the anchor slot unchanged.

Groups (Mixtral and FlexOlmo names, as `from_pretrained` gives them):
`expert` (`mlp.experts.*`), `router` (`mlp.gate`), `embeddings` (`embed_tokens`),
`lm_head`, `attention` (`self_attn`, q/k norms included), `norms` (layer norms and the
final norm); `all` is every group.

All experts of a layer share one tensor, so slot 0 (the anchor's FFN) cannot be frozen
with `requires_grad`; nor can row 0 of the router (the anchor's row), which shares the
router's weight with the expert rows. In expert stages both are frozen, as in BAR
(FlexOlmo's `freeze_experts="first_half"` masks the first half of the router's gradient
too): a post-accumulation hook zeroes their gradient (so clipping and Adam's moments never
see it), and `AnchorGuard` writes them back after every optimiser step, because AdamW's
decoupled weight decay shrinks them even with a zero gradient. `check_anchor_slot` then
verifies both bitwise. Router training after the merge trains every row.

Tied embeddings (`tie_word_embeddings`): `embed_tokens` and `lm_head` are one tensor, so
choosing either group trains it (and so both); it is counted once. `tied_note` says so.

Nothing here imports torch at module level: `trainable_parameter_count` serves `plan`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

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
_ROUTER = re.compile(r"^model\.layers\.(\d+)\.mlp\.gate\.weight$")


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
        raise BarctlError(f"unknown trainable group(s) {', '.join(sorted(unknown))}; "
                          f"choose from all, {', '.join(GROUPS)}")
    return set(GROUPS) if "all" in chosen else chosen


def tied_note(config: Mapping, groups: Iterable[str]) -> str | None:
    """A note when embeddings and lm_head are one tensor and only one of the two groups was chosen."""
    chosen = expand(groups)
    if not config.get("tie_word_embeddings") or len(chosen & {"embeddings", "lm_head"}) != 1:
        return None
    (named,) = chosen & {"embeddings", "lm_head"}
    return f"embeddings and lm_head are one tied tensor in this model: training {named} trains both"


def apply_trainable(model: nn.Module, groups: Iterable[str], *, freeze_anchor_row: bool = True) -> dict[str, int]:
    """Set `requires_grad` by group, hook the anchor's slot 0 (and router row 0); trainable parameters per group.

    Expert tensors count only their trainable slots, routers only their trainable rows
    (`freeze_anchor_row=False`, for router training after the merge, trains every row).
    A tied embedding tensor counts once, under `embeddings` when that group is chosen,
    else under `lm_head`.
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
        if owners == {"expert"} or (owners == {"router"} and freeze_anchor_row):
            param.register_post_accumulate_grad_hook(_zero_slot0)
            counts[group_of(name)] += param.numel() // param.shape[0] * (param.shape[0] - 1)
        else:
            counts[next(g for g in GROUPS if g in owners & chosen)] += param.numel()
    return counts


def _is_tied(model: nn.Module) -> bool:
    loaded: Any = model  # a transformers model: mypy reads its methods as module attributes
    output = loaded.get_output_embeddings()
    return output is not None and output.weight is loaded.get_input_embeddings().weight


def _zero_slot0(param: torch.Tensor) -> None:
    # slot 0 is the first expert of a fused expert tensor, or the first row of a router weight
    # After accumulation, in place: no copy of the whole (all slots) gradient per step, and it
    # still runs before gradient clipping, so slot 0 never counts in the gradient norm.
    if param.grad is not None:  # the hook runs after accumulation: always set
        param.grad[0].zero_()


class AnchorGuard:
    """A copy of slot 0 of every trainable expert tensor and row 0 of every trainable router,
    written back by `restore()`.

    The copy stays on the parameter's device (the anchor FFN's size once more in memory):
    restoring then costs one device-local copy per optimiser step.
    """

    def __init__(self, model: nn.Module):
        self._saved = [
            (param, param.detach()[0].clone())
            for name, param in model.named_parameters()
            if param.requires_grad and group_of(name) in ("expert", "router")
        ]

    def restore(self) -> None:
        """Write the saved values back, into the optimiser's fp32 master copy too under DeepSpeed ZeRO."""
        import torch

        from barctl.model.zero import write_anchor

        with torch.no_grad():
            for param, slot0 in self._saved:
                write_anchor(param, slot0)

    def verify(self) -> None:
        """BarctlError unless the module holds the saved values exactly (after `restore`): a module kept
        in a lower precision than the anchor (DeepSpeed's bf16) cannot, and the stage would fail at the end."""
        import torch

        from barctl.model.zero import anchor_part

        for param, slot0 in self._saved:
            held = anchor_part(param, slot0)
            if held is not None and not torch.equal(held[0].double(), held[1].double()):
                raise BarctlError(f"the anchor's weights ({slot0.dtype}) cannot stay exact in training: the model "
                                  f"keeps them in {param.dtype}; train in fp32, or start from a {param.dtype} model")


ModelOrDir = Union["nn.Module", Path, str]


def anchor_slot(model_or_dir: ModelOrDir) -> dict[str, torch.Tensor]:
    """Slot 0 of every expert tensor as `layers.<i>.<gate|up|down>` -> tensor (legacy [I,H]/[H,I] shapes),
    and row 0 of every router as `layers.<i>.router` -> [H]."""
    with _slot0(model_or_dir) as slots:
        return {key: get() for key, get in slots.items()}


def check_anchor_slot(model_or_dir: ModelOrDir, anchor_ffn: ModelOrDir | Mapping[str, torch.Tensor]) -> None:
    """BarctlError unless slot 0 and router row 0 of `model_or_dir` equal `anchor_ffn`'s bitwise.

    `anchor_ffn` is what `anchor_slot` returns, or a model or directory to read it from
    (one tensor at a time). Tensors of different dtypes must hold exactly the same values.
    """
    with _slot0(model_or_dir) as found, _slot0(anchor_ffn) as expected:
        if found.keys() != expected.keys():
            extra, missing = sorted(found.keys() - expected.keys()), sorted(expected.keys() - found.keys())
            raise BarctlError(f"anchor slot: the expert tensors differ from the anchor's "
                              f"(unexpected: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'})")
        for key in sorted(found):
            tensor, want = found[key](), expected[key]()
            if tensor.shape != want.shape:
                raise BarctlError(f"anchor slot: {key} has shape {list(tensor.shape)}, "
                                  f"the anchor's is {list(want.shape)}")
            if not _same_bits(tensor, want):
                diff = (tensor.double() - want.double()).abs().max().item()
                what = "router's anchor row (row 0)" if key.endswith(".router") else "anchor FFN (expert slot 0)"
                raise BarctlError(f"the {what} changed in training: {key} differs (max |difference| {diff:.3g})")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    if a.dtype == b.dtype:
        return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    return torch.equal(a.double(), b.double())


@contextmanager
def _slot0(source: ModelOrDir | Mapping) -> Iterator[dict[str, Callable[[], torch.Tensor]]]:
    """`layers.<i>.<proj>` -> a function giving slot 0 of that tensor, read lazily from a directory."""
    if isinstance(source, Mapping):
        yield {key: _returning(tensor) for key, tensor in source.items()}
    elif isinstance(source, (str, Path)):
        from barctl.model.checkpoint import CheckpointReader

        with CheckpointReader(Path(source)) as reader:
            yield _slot0_of_dir(reader)
    else:
        params = dict(source.named_parameters())
        yield {key: get for name in params
               for key, get in _slot0_fused(name, _reading(lambda n: params[n].detach(), name))}


def _slot0_of_dir(reader) -> dict[str, Callable[[], torch.Tensor]]:
    family = moe_family_for_moe_config(reader.config)
    slots: dict[str, Callable[[], torch.Tensor]] = {}
    for name in reader.names():
        parsed, router_layer = family.parse_expert(name), family.parse_router(name)
        if router_layer is not None:
            slots[f"layers.{router_layer}.router"] = _reading(lambda n: reader.get(n)[0], name)
        elif parsed is None:
            slots.update(_slot0_fused(name, _reading(reader.get, name)))
        elif parsed[1] == 0:
            slots[f"layers.{parsed[0]}.{parsed[2]}"] = _reading(reader.get, name)
    return slots


def _returning(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: tensor


def _reading(get: Callable[[str], torch.Tensor], name: str) -> Callable[[], torch.Tensor]:
    """Reads `name` when called (a directory's tensors load lazily, one at a time)."""
    return lambda: get(name)


def _slot0_fused(name: str, get: Callable[[], torch.Tensor]) -> list[tuple[str, Callable[[], torch.Tensor]]]:
    """Slot 0 of a fused expert tensor: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I];
    row 0 of a router weight [E, H]."""
    router = _ROUTER.match(name)
    if router:
        return [(f"layers.{router.group(1)}.router", lambda: get()[0])]
    m = _FUSED_EXPERT.match(name)
    if not m:
        return []
    layer = m.group(1)
    if m.group(2) == "down_proj":
        return [(f"layers.{layer}.down", lambda: get()[0])]
    return [
        (f"layers.{layer}.gate", lambda: (t := get())[0, : t.shape[1] // 2]),
        (f"layers.{layer}.up", lambda: (t := get())[0, t.shape[1] // 2 :]),
    ]


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
    elif family.name == "qwen3_moe":  # q/k norms over one head, shared by all heads
        attention += 2 * head_dim
    return {
        "expert": layers * (experts - 1) * 3 * hidden * inter,
        "router": layers * experts * hidden,
        "embeddings": vocab * hidden,
        "lm_head": 0 if config.get("tie_word_embeddings") else vocab * hidden,
        "attention": layers * attention,
        "norms": (2 * layers + 1) * hidden,
    }


def trainable_parameter_count(config: Mapping, groups: Iterable[str], *, freeze_anchor_row: bool = True) -> int:
    """Trainable parameters of `groups` in a barctl MoE with this config.json (torch-free, for `plan`).

    As `apply_trainable`: the router's anchor row counts only with `freeze_anchor_row=False`.
    """
    chosen = expand(groups)
    sizes = group_sizes(config)
    count = sum(sizes[g] for g in chosen)
    if "router" in chosen and freeze_anchor_row:
        count -= int(config["num_hidden_layers"]) * int(config["hidden_size"])
    if config.get("tie_word_embeddings") and chosen & {"embeddings", "lm_head"} == {"lm_head"}:
        count += sizes["embeddings"]
    return count
