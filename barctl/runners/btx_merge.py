"""`btx.merge`: the dense BTX experts -> one (N+1)-expert MoE (barctl.model.btx)."""

from __future__ import annotations

from typing import Any

from barctl.runners import NodeContext, model_dir


def run(ctx: NodeContext) -> dict[str, Any]:
    from barctl.model.btx import merge_dense

    expert_dirs = [model_dir(ctx, node_id) for node_id in ctx.node.inputs[1:]]
    return merge_dense(model_dir(ctx, "base"), expert_dirs, ctx.out, top_k=ctx.config["top_k"],
                       seed=ctx.config["seed"], max_shard_bytes=ctx.recipe.max_shard_bytes)
