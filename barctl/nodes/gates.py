"""`gates`: check the declared gates against the evaluations; a violated one fails the node (and the apply)."""

from __future__ import annotations

import json
from typing import Any

from barctl.errors import BarctlError
from barctl.gates import gate_failures
from barctl.graph import evaluated_models
from barctl.nodes import NodeContext
from barctl.results import AVERAGE, average


def run(ctx: NodeContext) -> dict[str, Any]:
    gates = ctx.config["gates"]
    failures = gate_failures(gates, artifact_scores(ctx))
    if failures:
        raise BarctlError("; ".join(failures) + ". Every artifact built so far is kept; the export waits "
                          "until the gates pass (see `barctl eval` for the scores)")
    (ctx.out / "gates.json").write_text(json.dumps({"passed": [g["name"] for g in gates]}, indent=2) + "\n")
    return {"passed": [g["name"] for g in gates]}


def artifact_scores(ctx: NodeContext) -> dict[str, dict[str, float]]:
    """Model -> domain -> score, read from the evaluations' results.json (their content was
    checked before this node ran), never from the lockfile's copy, which anyone can edit."""
    scores = {}
    for node_id, model in evaluated_models(ctx.recipe):
        results = json.loads((ctx.inputs[node_id] / "results.json").read_text(encoding="utf-8"))
        row = {domain: float(result["score"]) for domain, result in results["domains"].items()}
        scores[model] = {**row, AVERAGE: average(row)}
    return scores
