"""Gates: conditions on evaluation scores that a build must meet before it is exported."""

from __future__ import annotations

from typing import Any

# Scores are means of per-row results; a gate at equality must not fail on float noise.
EPSILON = 1e-9


def gate_failures(gates: list[dict[str, Any]], scores: dict[str, dict[str, float]]) -> list[str]:
    """One line per violated condition, naming the gate, the domain and both numbers; empty when all hold."""
    failures = []
    for gate in gates:
        for domain in gate["domains"]:
            actual = scores[gate["model"]][domain]
            reference, label = _reference(gate["at_least"], domain, scores)
            bound = reference - gate["tolerance"]
            if actual < bound - EPSILON:
                slack = f" - {gate['tolerance']:g}" if gate["tolerance"] else ""
                failures.append(f"gate '{gate['name']}' failed on {domain}: {gate['model']} scored {actual:.4f}, "
                                f"below {label} {reference:.4f}{slack}")
    return failures


def _reference(at_least: Any, domain: str, scores: dict[str, dict[str, float]]) -> tuple[float, str]:
    if isinstance(at_least, (int, float)):
        return float(at_least), "the threshold"
    model = f"experts.{domain}" if at_least == "own_expert" else at_least
    return scores[model][domain], model
