"""Evaluation results as recorded in the lockfile: per model, per domain scores, their 95% intervals and routing."""

from __future__ import annotations

from typing import Any

from barctl.engine.baselines import BASELINES

AVERAGE = "average"


def _eval_entries(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Model ("anchor", "experts.<name>", "merged") -> its evaluation's metrics, in the lockfile's order."""
    return {entry["config"]["model"]: entry["metrics"] for entry in entries.values() if entry.get("kind") == "eval"}


def eval_scores(entries: dict[str, dict[str, Any]], experts: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Model -> domain -> score, plus the domains' average; with `experts` (slot order), in the order of
    BAR's table: the anchor, the experts, the merged model, the baselines (btx, retrain)."""
    scores = {}
    evaluated = _eval_entries(entries)
    if experts is not None:
        order = ["anchor", *(f"experts.{name}" for name in experts), "merged", *BASELINES]
        evaluated = {model: evaluated[model] for model in order if model in evaluated}
    every_domain = _every_domain(evaluated)
    for model, metrics in evaluated.items():
        row = {domain: result["score"] for domain, result in metrics["domains"].items()}
        if row.keys() == every_domain:  # an expert evaluated on its own domain only has no average
            row[AVERAGE] = metrics[AVERAGE]
        scores[model] = row
    return scores


def _every_domain(evaluated: dict[str, dict[str, Any]]) -> set[str]:
    return {domain for metrics in evaluated.values() for domain in metrics["domains"]}


def eval_intervals(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Model -> domain -> [low, high], the score's 95% interval, plus the average's (where recorded)."""
    intervals = {}
    evaluated = _eval_entries(entries)
    every_domain = _every_domain(evaluated)
    for model, metrics in evaluated.items():
        row = {domain: result["ci95"] for domain, result in metrics["domains"].items() if "ci95" in result}
        if "average_ci95" in metrics and metrics["domains"].keys() == every_domain:
            row[AVERAGE] = metrics["average_ci95"]
        intervals[model] = row
    return intervals


def average(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores) if scores else 0.0


def routing_report(entries: dict[str, dict[str, Any]], field: str = "routing") -> dict[str, Any]:
    """Domain -> the merged model's `field`: `routing` (mean share per slot, anchor first), `routing_top1`
    (share of top-1 choices per slot) or `routing_entropy` (nats); {} when it was not measured."""
    return _eval_entries(entries).get("merged", {}).get(field, {})


def indistinct_experts(entries: dict[str, dict[str, Any]]) -> list[str]:
    """The evaluated experts whose 95% interval overlaps the anchor's on every domain both were evaluated on:
    too few evaluation rows to tell them apart from the anchor anywhere."""
    intervals = eval_intervals(entries)
    anchor = {domain: ci for domain, ci in intervals.get("anchor", {}).items() if domain != AVERAGE}
    if not anchor:
        return []
    return [model for model, row in intervals.items() if model.startswith("experts.")
            and any(domain in row for domain in anchor)
            and all(overlap(row[domain], ci) for domain, ci in anchor.items() if domain in row)]


def small_sample_warning(entries: dict[str, dict[str, Any]]) -> str | None:
    """A warning naming the experts that `indistinct_experts` finds, with the evaluation sets' sizes; None if none."""
    experts = indistinct_experts(entries)
    if not experts:
        return None
    sizes = sorted({result["n"] for result in _eval_entries(entries)["anchor"]["domains"].values()})
    rows = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"
    return (f"warning: {', '.join(experts)}: 95% intervals overlap the anchor's on every domain; with {rows} "
            "evaluation rows per domain the table cannot tell these experts from the anchor (raise evals' `limit` "
            "or add evaluation rows)")


def overlap(a: list[float], b: list[float]) -> bool:
    """Whether two intervals [low, high] share a point."""
    return a[0] <= b[1] and b[0] <= a[1]
