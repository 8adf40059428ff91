"""`merge`: N trained experts -> one (N+1)-expert MoE, streamed tensor by tensor."""

from __future__ import annotations

from typing import Any

from barctl.runners import NodeContext


def run(ctx: NodeContext) -> dict[str, Any]:
    from barctl.model.expert_merge import merge

    expert_dirs = [ctx.inputs[i] for i in ctx.node.inputs if i != "base"]
    with ctx.steps("merging", "tensors") as steps:
        report = merge(ctx.inputs["base"] / "anchor", expert_dirs, ctx.out, shared=ctx.config["shared"],
                       top_k=ctx.config["top_k"], max_shard_bytes=ctx.recipe.max_shard_bytes, track=steps.track)
    return dict(report)
