"""BTX's merge: N dense experts -> one (N+1)-expert MoE, streamed tensor by tensor.

Slot 0 is the anchor's FFN and slot i expert i's FFN, as in BAR's merge; every other tensor
is the uniform mean over the dense experts (BTX averages the experts; the seed model is not
one of them). The mean is taken in float64, so experts that all equal the anchor give the
anchor's tensors exactly. The router starts as a branched expert's does, N(0,
initializer_range) from `seed`: the router node initialises and trains it as BAR's.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import cast

import torch

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader, ShardedWriter, copy_side_files, write_config
from barctl.model.families import family_for
from barctl.model.upcycle import router_init


def merge_dense(anchor_dir: Path, expert_dirs: list[Path], out_dir: Path, *, top_k: int, seed: int,
                max_shard_bytes: int) -> dict:
    """The BTX MoE of the anchor and its dense experts, written to `out_dir`."""
    if not expert_dirs:
        raise BarctlError("the BTX merge needs at least one expert")
    with ExitStack() as stack:
        anchor = stack.enter_context(CheckpointReader(anchor_dir))
        family = family_for(anchor.config)
        experts = [stack.enter_context(CheckpointReader(d)) for d in expert_dirs]
        for expert in experts:
            _check_dense_expert(anchor, expert)
        writer = ShardedWriter(out_dir, max_shard_bytes)
        averaged, ffn_dtype = 0, None
        for name in anchor.names():
            base = anchor.get(name)
            parsed = family.parse_dense_ffn(name)
            if parsed is not None:
                ffn_dtype = base.dtype
                writer.add(family.expert_name(parsed[0], 0, parsed[1]), base)
                for slot, expert in enumerate(experts, start=1):
                    writer.add(family.expert_name(parsed[0], slot, parsed[1]), expert.get(name).to(base.dtype))
                continue
            total = cast(torch.Tensor, sum(expert.get(name).to(torch.float64) for expert in experts))
            writer.add(name, (total / len(experts)).to(base.dtype))
            averaged += 1
        if ffn_dtype is None:
            raise BarctlError(f"{anchor_dir} has no FFN tensors named like {family.dense_ffn_name(0, 'gate')}")
        num_experts = len(experts) + 1
        for name, router in router_init(family, anchor.config, num_experts, seed, ffn_dtype).items():
            writer.add(name, router)
        writer.close()
        write_config(out_dir, family.moe_config(anchor.config, num_experts=num_experts, top_k=top_k))
        copy_side_files(anchor_dir, out_dir)
    return {"num_experts": num_experts, "top_k": top_k, "shared": "average over the dense experts",
            "shared_tensors_averaged": averaged}


def _check_dense_expert(anchor: CheckpointReader, expert: CheckpointReader) -> None:
    """An expert must be a dense model with exactly the anchor's tensors, of the anchor's shapes."""
    if expert.config.get("model_type") != anchor.config.get("model_type"):
        raise BarctlError(f"{expert.dir} is a {expert.config.get('model_type')} model; "
                          f"the anchor is {anchor.config.get('model_type')}")
    names, expected = set(expert.names()), set(anchor.names())
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise BarctlError(f"{expert.dir} does not match the anchor's tensors: {detail}")
    for name in sorted(names):
        if expert.shape_of(name) != anchor.shape_of(name):
            raise BarctlError(f"{expert.dir}: {name} has shape {list(expert.shape_of(name))}, "
                              f"the anchor's is {list(anchor.shape_of(name))}")
