"""`gates`: check the declared gates against the evaluations; a violated one fails the node (and the apply)."""

from __future__ import annotations

import json
from typing import Any

from barctl.engine.graph import evaluated_models
from barctl.errors import BarctlError
from barctl.evaluate.gate_rules import Intervals, Scores, gate_failures, uses_intervals
from barctl.evaluate.results import AVERAGE, average
from barctl.runners import NodeContext


def run(ctx: NodeContext) -> dict[str, Any]:
    gates = ctx.config["gates"]
    results = artifact_results(ctx)
    intervals = artifact_intervals(ctx, results) if any(uses_intervals(g) for g in gates) else None
    failures = gate_failures(gates, artifact_scores(results), intervals)
    if failures:
        raise BarctlError("; ".join(failures) + ". Every artifact built so far is kept; the export waits "
                          "until the gates pass (see `barctl eval` for the scores)")
    (ctx.out / "gates.json").write_text(json.dumps({"passed": [g["name"] for g in gates]}, indent=2) + "\n")
    return {"passed": [g["name"] for g in gates]}


def artifact_results(ctx: NodeContext) -> dict[str, dict[str, Any]]:
    """Model -> domain -> its result (score and per-row results), read from the evaluations' results.json
    (their content was checked before this node ran), never from the lockfile's copy, which anyone can edit."""
    return {model: json.loads((ctx.inputs[node_id] / "results.json").read_text(encoding="utf-8"))["domains"]
            for node_id, model in evaluated_models(ctx.recipe)}


def artifact_scores(results: dict[str, dict[str, Any]]) -> Scores:
    """Model -> domain -> score, plus the domains' average."""
    scores = {}
    for model, domains in results.items():
        row = {domain: float(result["score"]) for domain, result in domains.items()}
        scores[model] = {**row, AVERAGE: average(row)}
    return scores


def artifact_intervals(ctx: NodeContext, results: dict[str, dict[str, Any]]) -> Intervals:
    """Model -> domain -> 95% interval, plus the average's: drawn from the per-row results exactly as
    the evaluation's table and lockfile draw them."""
    from barctl.evaluate.intervals import average_interval, score_interval

    metrics = {domain: spec["metric"] for domain, spec in ctx.recipe.evals["domains"].items()}
    intervals = {}
    for model, domains in results.items():
        row = {domain: score_interval(metrics[domain], result["rows"], domain) for domain, result in domains.items()}
        row[AVERAGE] = average_interval({d: (metrics[d], result["rows"]) for d, result in domains.items()})
        intervals[model] = row
    return intervals
