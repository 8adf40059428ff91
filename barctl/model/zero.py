"""The anchor's slots under DeepSpeed ZeRO: written into every copy the optimiser keeps.

The anchor owns the start of some tensors: slot 0 of each fused expert tensor and row 0 of
each router, i.e. the first `anchor.numel()` elements of the flattened parameter. Outside
DeepSpeed, writing them back into the module after each optimiser step is enough. Under ZeRO:

- stages 1 and 2 keep the whole module parameter on every rank, but the optimiser steps an fp32
  master copy split across ranks; AdamW's weight decay moves the anchor's part there, and the
  next step would copy it back into the module (and a checkpoint would keep it);
- stage 3 splits the module parameter itself (its `ds_tensor`; the parameter has shape [0]
  outside a forward pass) and its fp32 master copy the same way.

Each rank writes the anchor's values into the part of its own partitions that overlaps the
anchor's elements: no gathering, no communication.

DeepSpeed (0.19) source this relies on:
- deepspeed/utils/tensor_fragment.py `tensor_fragment` (a ZeRO-1/2 parameter's `_hp_mapping`):
  `lp_fragment_address.start` is where this rank's fp32 fragment `hp_fragment` starts in the
  flattened parameter, as `safe_set_full_fp32_param` and `get_full_hp_param` use it.
- deepspeed/runtime/zero/stage3.py `get_local_fp32_param`/`set_local_hp_param` (behind
  `safe_get_local_fp32_param`/`safe_set_local_fp32_param`): the fp32 partition of a ZeRO-3
  parameter, `ds_tensor.numel()` elements starting at `ds_tensor.numel() x` the rank in the
  parameter's process group (`set_full_hp_param` narrows a full value the same way).
- deepspeed/utils/z3_leaf_module.py `set_z3_leaf_modules`: a module flagged as a leaf has all its
  parameters gathered on entry, so a MoE block's data-dependent expert order cannot desynchronise
  ZeRO-3's prefetching across ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def write_anchor(param: nn.Parameter, anchor: torch.Tensor) -> None:
    """Write `anchor` over the start of `param` (slot 0 / row 0), in the module and the optimiser's fp32 master copy."""
    flat = anchor.reshape(-1)
    if hasattr(param, "ds_id"):  # ZeRO-3: this rank holds one partition of the flattened parameter
        import torch.distributed as dist
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        partition = getattr(param, "ds_tensor")  # DeepSpeed's attributes, set at run time
        start = partition.numel() * dist.get_rank(group=getattr(param, "ds_process_group"))
        _write_overlap(partition.data.view(-1), start, flat)
        master = safe_get_local_fp32_param(param)
        if master is not None:  # None until the optimiser exists, or for a frozen parameter
            master = master.clone()
            _write_overlap(master.view(-1), start, flat)
            safe_set_local_fp32_param(param, master)
        return
    param.data[0].copy_(anchor)
    mapping = getattr(param, "_hp_mapping", None)  # ZeRO-1/2 (and DeepSpeed's bf16 optimiser)
    if mapping is not None:
        _write_overlap(mapping.hp_fragment.data.view(-1), mapping.lp_fragment_address.start, flat)


def anchor_part(param: nn.Parameter, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(what `param`'s module copy holds of the anchor's elements on this rank, the anchor's values there),
    or None when this rank holds none of them."""
    flat = anchor.reshape(-1)
    if hasattr(param, "ds_id"):
        import torch.distributed as dist

        partition = getattr(param, "ds_tensor").data.view(-1)  # DeepSpeed's attributes
        start = partition.numel() * dist.get_rank(group=getattr(param, "ds_process_group"))
        end = min(start + partition.numel(), flat.numel())
        return (partition[: end - start], flat[start:end]) if start < end else None
    return param.data[0].reshape(-1), flat


def _write_overlap(part: torch.Tensor, start: int, flat: torch.Tensor) -> None:
    """Copy flat[start : start + len(part)] (clipped to `flat`) into the front of `part`."""
    end = min(start + part.numel(), flat.numel())
    if start < end:
        part[: end - start].copy_(flat[start:end])


def moe_blocks_as_leaves(model: nn.Module) -> list[type]:
    """Flag the model's MoE blocks (the modules holding `experts` and a `gate`) as ZeRO-3 leaf modules."""
    from deepspeed.utils import set_z3_leaf_modules

    classes = list(dict.fromkeys(type(module) for module in model.modules()
                                 if hasattr(module, "experts") and hasattr(module, "gate")))
    if classes:
        set_z3_leaf_modules(model, classes)
    return classes
