"""`gates`: check the declared gates against the evaluations; a violated one fails the node (and the apply)."""

from __future__ import annotations

import json
from typing import Any

from barctl.errors import BarctlError
from barctl.gates import gate_failures
from barctl.nodes import NodeContext
from barctl.results import eval_scores


def run(ctx: NodeContext) -> dict[str, Any]:
    gates = ctx.config["gates"]
    failures = gate_failures(gates, eval_scores(ctx.upstream))
    if failures:
        raise BarctlError("; ".join(failures) + ". Every artifact built so far is kept; the export waits "
                          "until the gates pass (see `barctl eval` for the scores)")
    (ctx.out / "gates.json").write_text(json.dumps({"passed": [g["name"] for g in gates]}, indent=2) + "\n")
    return {"passed": [g["name"] for g in gates]}
