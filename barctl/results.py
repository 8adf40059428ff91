"""Evaluation results as recorded in the lockfile: per model, per domain scores and routing shares."""

from __future__ import annotations

from typing import Any

AVERAGE = "average"


def eval_scores(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Model ("anchor", "experts.<name>", "merged") -> domain -> score, plus the domains' average."""
    scores = {}
    for entry in entries.values():
        if entry.get("kind") != "eval":
            continue
        metrics = entry["metrics"]
        row = {domain: result["score"] for domain, result in metrics["domains"].items()}
        row[AVERAGE] = metrics[AVERAGE]
        scores[entry["config"]["model"]] = row
    return scores


def average(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores) if scores else 0.0


def routing_shares(entries: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """Domain -> the merged model's mean routing share per slot (anchor first), when it was measured."""
    for entry in entries.values():
        if entry.get("kind") == "eval" and entry["config"]["model"] == "merged":
            return entry["metrics"].get("routing", {})
    return {}
