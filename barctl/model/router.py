"""Router tensors of a MoE checkpoint: extract them, or draw fresh random ones."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from barctl.model.checkpoint import CheckpointReader
from barctl.model.families import moe_family_for_moe_config, num_layers


def router_names(reader: CheckpointReader) -> list[str]:
    family = moe_family_for_moe_config(reader.config)
    return [family.router_name(layer) for layer in range(num_layers(reader.config))]


def extract_router(moe_dir: Path, out_file: Path) -> None:
    """Write only the router tensors of `moe_dir` to the safetensors file `out_file`."""
    with CheckpointReader(moe_dir) as reader:
        tensors = {name: reader.get(name) for name in router_names(reader)}
    save_file(tensors, out_file, metadata={"format": "pt"})


def random_router(moe_dir: Path, out_file: Path, seed: int) -> None:
    """Router tensors shaped like `moe_dir`'s, drawn N(0, initializer_range) in layer order."""
    generator = torch.Generator().manual_seed(seed)
    with CheckpointReader(moe_dir) as reader:
        std = float(reader.config.get("initializer_range", 0.02))
        tensors = {
            name: (torch.randn(reader.shape_of(name), generator=generator) * std).to(reader.dtype_of(name))
            for name in router_names(reader)
        }
    save_file(tensors, out_file, metadata={"format": "pt"})
