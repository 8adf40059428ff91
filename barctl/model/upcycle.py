"""Branch: a dense anchor becomes a 2-expert MoE (slot 0 anchor FFN, slot 1 the new expert)."""

from __future__ import annotations

from pathlib import Path

import torch

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader, ShardedWriter, copy_side_files, write_config
from barctl.model.families import Family, family_for, num_layers
from barctl.progress import Track


def router_init(family: Family, config: dict, num_experts: int, seed: int, dtype: torch.dtype) -> dict:
    """Router weights [num_experts, H] for every layer, drawn N(0, initializer_range) in layer order."""
    generator = torch.Generator().manual_seed(seed)
    std = float(config.get("initializer_range", 0.02))
    hidden = int(config["hidden_size"])
    return {
        family.router_name(layer): (torch.randn(num_experts, hidden, generator=generator) * std).to(dtype)
        for layer in range(num_layers(config))
    }


def branch(anchor_dir: Path, out_dir: Path, *, ffn_dir: Path | None, seed: int, max_shard_bytes: int,
           track: Track = iter) -> None:
    """Stream the anchor into a 2-expert MoE; slot 1 is `ffn_dir`'s FFN, or a copy of the anchor's.

    `track` counts the anchor's tensors as they are written (barctl.progress)."""
    with CheckpointReader(anchor_dir) as anchor:
        family = family_for(anchor.config)
        ffn = CheckpointReader(ffn_dir) if ffn_dir is not None else None
        if ffn is not None:
            _check_ffn_source(family, anchor, ffn)
        writer = ShardedWriter(out_dir, max_shard_bytes)
        ffn_dtype = None
        for name in track(anchor.names()):
            tensor = anchor.get(name)
            parsed = family.parse_dense_ffn(name)
            if parsed is None:
                writer.add(name, tensor)
                continue
            layer, proj = parsed
            ffn_dtype = tensor.dtype
            writer.add(family.expert_name(layer, 0, proj), tensor)
            new = ffn.get(name).to(tensor.dtype) if ffn is not None else tensor
            writer.add(family.expert_name(layer, 1, proj), new)
        if ffn_dtype is None:
            raise BarctlError(f"{anchor_dir} has no FFN tensors named like {family.dense_ffn_name(0, 'gate')}")
        for name, router in router_init(family, anchor.config, 2, seed, ffn_dtype).items():
            writer.add(name, router)
        writer.close()
        if ffn is not None:
            ffn.close()
        write_config(out_dir, family.moe_config(anchor.config, num_experts=2, top_k=2))
        copy_side_files(anchor_dir, out_dir)


def _check_ffn_source(family: Family, anchor: CheckpointReader, ffn: CheckpointReader) -> None:
    ffn_family = family_for(ffn.config)
    if ffn_family is not family:
        raise BarctlError(
            f"{ffn.dir} is a {ffn.config.get('model_type')} model; its FFN cannot seed experts of a "
            f"{anchor.config.get('model_type')} anchor"
        )
    for name in anchor.names():
        if family.parse_dense_ffn(name) is None:
            continue
        if name not in ffn:
            raise BarctlError(f"{ffn.dir} has no tensor {name}, which the anchor's FFN has")
        if ffn.shape_of(name) != anchor.shape_of(name):
            raise BarctlError(
                f"{ffn.dir}: {name} has shape {list(ffn.shape_of(name))}, "
                f"the anchor's is {list(anchor.shape_of(name))}; the pretrained model must have the anchor's shape"
            )
