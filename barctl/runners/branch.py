"""`experts.<name>.branch`: the dense anchor -> a 2-expert MoE (slot 0 anchor, slot 1 trainable)."""

from __future__ import annotations

from typing import Any

from barctl.runners import NodeContext


def run(ctx: NodeContext) -> dict[str, Any]:
    from barctl.model.upcycle import branch

    base = ctx.inputs["base"]
    ffn_dir = base / "pretrained" if ctx.config["ffn"] == "pretrained" else None
    with ctx.steps("branching", "tensors") as steps:
        branch(base / "anchor", ctx.out, ffn_dir=ffn_dir, seed=ctx.config["seed"],
               max_shard_bytes=ctx.recipe.max_shard_bytes, track=steps.track)
    return {}
