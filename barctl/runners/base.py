"""`base`: materialise the anchor (and the optional pretrained FFN source) as safetensors."""

from __future__ import annotations

from typing import Any

from barctl.engine.hub import at_commit
from barctl.runners import NodeContext


def run(ctx: NodeContext) -> dict[str, Any]:
    from barctl.model.source import materialise

    recipe = ctx.recipe
    ctx.say("materialising the anchor")
    materialise(at_commit(recipe.resolve_source(ctx.config["anchor"]), ctx.node.data["anchor"]), ctx.out / "anchor")
    if ctx.config["pretrained"] is not None:
        ctx.say("materialising the pretrained FFN source")
        materialise(at_commit(recipe.resolve_source(ctx.config["pretrained"]), ctx.node.data["pretrained"]),
                    ctx.out / "pretrained")
    return {}
