"""Route: merge N trained 2-expert MoEs into one (N+1)-expert MoE, streamed tensor by tensor."""

from __future__ import annotations

from pathlib import Path

import torch

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader, ShardedWriter, copy_side_files, write_config
from barctl.model.families import Family, family_for, moe_family_for_moe_config, num_layers
from barctl.progress import Track

_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "num_attention_heads")


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (unlike torch.equal, NaN == NaN and -0.0 != 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def merge(
    anchor_dir: Path,
    expert_dirs: list[Path],
    out_dir: Path,
    *,
    shared: str,
    top_k: int,
    max_shard_bytes: int,
    track: Track = iter,
) -> dict:
    """Slot 0 = anchor FFN, slot i = expert i's slot 1; router rows and shared tensors as in BAR.

    `track` counts the anchor's tensors as they are merged (barctl.progress)."""
    if shared not in ("average", "anchor"):
        raise BarctlError(f"shared must be 'average' or 'anchor', got {shared!r}")
    if not expert_dirs:
        raise BarctlError("merge needs at least one expert")
    anchor = CheckpointReader(anchor_dir)
    family = family_for(anchor.config)
    experts = [CheckpointReader(d) for d in expert_dirs]
    for expert in experts:
        _check_expert(family, anchor, expert)

    writer = ShardedWriter(out_dir, max_shard_bytes)
    averaged, max_diff = 0, 0.0
    for name in track(anchor.names()):
        base = anchor.get(name)
        parsed = family.parse_dense_ffn(name)
        if parsed is not None:
            _write_slots(family, writer, base, experts, *parsed)
        elif shared == "anchor":
            writer.add(name, base)
        else:
            total = base.to(torch.float32, copy=True)
            for expert in experts:
                total += expert.get(name).to(torch.float32)
            mean = (total / (len(experts) + 1)).to(base.dtype)
            max_diff = max(max_diff, (mean.to(torch.float32) - base.to(torch.float32)).abs().max().item())
            averaged += 1
            writer.add(name, mean)
    for layer in range(num_layers(anchor.config)):
        writer.add(family.router_name(layer), _merged_router(family, experts, layer))
    writer.close()
    num_experts = len(experts) + 1
    write_config(out_dir, family.moe_config(anchor.config, num_experts=num_experts, top_k=top_k))
    copy_side_files(anchor_dir, out_dir)
    return {
        "num_experts": num_experts,
        "top_k": top_k,
        "shared": shared,
        "shared_tensors_averaged": averaged,
        "max_shared_abs_diff": max_diff,
    }


def _write_slots(
    family: Family, writer: ShardedWriter, base: torch.Tensor, experts: list[CheckpointReader], layer: int, proj: str
) -> None:
    slot0 = family.expert_name(layer, 0, proj)
    for expert in experts:
        if not bitwise_equal(expert.get(slot0), base):
            raise BarctlError(
                f"{expert.dir}: layer {layer} tensor {slot0} differs from the anchor's "
                f"{family.dense_ffn_name(layer, proj)}; slot 0 must stay frozen (the anchor FFN)"
            )
    writer.add(slot0, base)
    for i, expert in enumerate(experts, start=1):
        writer.add(family.expert_name(layer, i, proj), expert.get(family.expert_name(layer, 1, proj)).to(base.dtype))


def _merged_router(family: Family, experts: list[CheckpointReader], layer: int) -> torch.Tensor:
    """Row 0 = mean of the experts' anchor rows, row i = expert i's own row."""
    name = family.router_name(layer)
    rows: list[torch.Tensor] = []
    anchor_sum: torch.Tensor | None = None
    for expert in experts:
        router = expert.get(name)
        anchor_sum = router[0].to(torch.float32) if anchor_sum is None else anchor_sum + router[0].to(torch.float32)
        rows.append(router[1])
    if anchor_sum is None:
        raise BarctlError("a merge needs at least one expert")
    dtype = rows[0].dtype
    return torch.stack([(anchor_sum / len(experts)).to(dtype)] + [r.to(dtype) for r in rows])


def _check_expert(family: Family, anchor: CheckpointReader, expert: CheckpointReader) -> None:
    moe_family = moe_family_for_moe_config(expert.config)
    if moe_family is not family:
        raise BarctlError(
            f"{expert.dir} is a {moe_family.name} MoE but the anchor ({anchor.config.get('model_type')}) "
            f"branches into {family.name}"
        )
    if family.num_experts(expert.config) != 2:
        raise BarctlError(f"{expert.dir} has {family.num_experts(expert.config)} experts; branched experts have 2")
    for key in _SHAPE_KEYS:
        if expert.config.get(key) != anchor.config.get(key):
            raise BarctlError(
                f"{expert.dir}: config {key} is {expert.config.get(key)}, the anchor's is {anchor.config.get(key)}"
            )
    expected = set()
    for name in anchor.names():
        parsed = family.parse_dense_ffn(name)
        if parsed is None:
            expected.add(name)
        else:
            expected.update(family.expert_name(parsed[0], slot, parsed[1]) for slot in (0, 1))
    expected.update(family.router_name(layer) for layer in range(num_layers(anchor.config)))
    names = set(expert.names())
    missing, extra = sorted(expected - names), sorted(names - expected)
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise BarctlError(f"{expert.dir} does not match the anchor's tensors: {detail}")
    hidden = int(anchor.config["hidden_size"])
    for name in sorted(names):
        slot = family.parse_expert(name)
        if slot is not None:
            reference = anchor.shape_of(family.dense_ffn_name(slot[0], slot[2]))
        elif family.parse_router(name) is not None:
            reference = (2, hidden)
        else:
            reference = anchor.shape_of(name)
        if expert.shape_of(name) != reference:
            raise BarctlError(
                f"{expert.dir}: {name} has shape {list(expert.shape_of(name))}, expected {list(reference)}"
            )
