"""`router`: the merged model's router weights, initialised (and, when declared, trained)."""

from __future__ import annotations

from typing import Any

from barctl.errors import BarctlError
from barctl.nodes import NodeContext

ROUTER_FILE = "router.safetensors"


def run(ctx: NodeContext) -> dict[str, Any]:
    from barctl.model.router import extract_router, random_router

    if ctx.config["train"] is not None:
        raise BarctlError("routing.train is not available in this barctl version yet")
    merged = ctx.inputs["merge"]
    if ctx.config["init"] == "random":
        random_router(merged, ctx.out / ROUTER_FILE, ctx.config["seed"])
    else:
        extract_router(merged, ctx.out / ROUTER_FILE)
    return {}
