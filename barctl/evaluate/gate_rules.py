"""Gates: conditions on evaluation scores that a build must meet before it is exported.

On each of its domains a gate compares `model` with `at_least` (a number or a model):
- plainly: model >= at_least - tolerance;
- `intervals_apart`: the model's 95% interval lies entirely above the reference's;
- `tolerance: ci95`: the model fails only when its interval lies entirely below the reference's;
- `keep` with `over`: the reference becomes over + keep * (at_least - over), the share of
  at_least's gain over `over` that the model must keep (over itself when at_least did not gain).
`own_expert`, on either side, is the expert named like the domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Scores are means of per-row results; a gate at equality must not fail on float noise.
EPSILON = 1e-9
OWN_EXPERT = "own_expert"
CI95 = "ci95"

Interval = tuple[float, float]
Scores = dict[str, dict[str, float]]
Intervals = dict[str, dict[str, Interval]]


def uses_intervals(gate: dict[str, Any]) -> bool:
    """Whether the gate's condition reads the scores' 95% intervals."""
    return bool(gate.get("intervals_apart")) or gate["tolerance"] == CI95


def model_on(reference: str, domain: str) -> str:
    """The evaluated model a gate's model reference names on `domain` (`own_expert` -> `experts.<domain>`)."""
    return f"experts.{domain}" if reference == OWN_EXPERT else reference


def gate_failures(gates: list[dict[str, Any]], scores: Scores, intervals: Intervals | None = None) -> list[str]:
    """One line per violated condition, naming the gate, the domain and the numbers (with their intervals
    where the condition uses them); empty when all hold. `intervals` is needed only by gates that use them."""
    failures = []
    for gate in gates:
        if uses_intervals(gate) and intervals is None:
            raise ValueError(f"gate '{gate['name']}' compares 95% intervals: pass the scores' intervals")
        for domain in gate["domains"]:
            failure = _failure(gate, domain, scores, intervals if uses_intervals(gate) else None)
            if failure:
                failures.append(f"gate '{gate['name']}' failed on {domain}: {failure}")
    return failures


@dataclass(frozen=True)
class _Side:
    label: str  # a model, or "the threshold"
    score: float
    interval: Interval | None  # None where the condition does not use intervals, or for a number

    @property
    def low(self) -> float:
        return self.interval[0] if self.interval else self.score

    @property
    def high(self) -> float:
        return self.interval[1] if self.interval else self.score

    @property
    def value(self) -> str:
        spread = f" [{self.interval[0]:.4f}, {self.interval[1]:.4f}]" if self.interval else ""
        return f"{self.score:.4f}{spread}"

    def __str__(self) -> str:
        return f"{self.label} {self.value}"


def _side(reference: Any, domain: str, scores: Scores, intervals: Intervals | None) -> _Side:
    if isinstance(reference, (int, float)):
        return _Side("the threshold", float(reference), None)
    model = model_on(reference, domain)
    interval = None
    if intervals is not None:
        low, high = intervals[model][domain]  # a list when read from the lockfile
        interval = (low, high)
    return _Side(model, scores[model][domain], interval)


def _failure(gate: dict[str, Any], domain: str, scores: Scores, intervals: Intervals | None) -> str | None:
    model = _side(gate["model"], domain, scores, intervals)
    reference = _side(gate["at_least"], domain, scores, intervals)
    scored = f"{model.label} scored {model.value}"
    if "keep" in gate:
        return _keep_failure(gate, model, scored, reference, _side(gate["over"], domain, scores, None))
    if gate.get("intervals_apart"):
        if model.low > reference.high + EPSILON:
            return None
        return f"{scored}, its 95% interval not entirely above {reference}"
    if gate["tolerance"] == CI95:
        if model.high >= reference.low - EPSILON:
            return None
        return f"{scored}, its 95% interval entirely below {reference}"
    if model.score >= reference.score - gate["tolerance"] - EPSILON:
        return None
    slack = f" - {gate['tolerance']:g}" if gate["tolerance"] else ""
    return f"{scored}, below {reference}{slack}"


def _keep_failure(gate: dict[str, Any], model: _Side, scored: str, gainer: _Side, over: _Side) -> str | None:
    """The keep condition: the kept share of `gainer`'s gain over `over` is a point, not an interval."""
    keep, tolerance = gate["keep"], gate["tolerance"]
    if gainer.score > over.score:
        bound = over.score + keep * (gainer.score - over.score)
        because = (f"{bound:.4f} = {over.label} {over.score:.4f} + {keep:g} x ({gainer.label} {gainer.score:.4f}"
                   f" - {over.label} {over.score:.4f})")
    else:
        bound = over.score
        because = (f"{over.label} {over.score:.4f} ({gainer.label} {gainer.score:.4f} did not gain over "
                   f"{over.label}, so {model.label} must not fall below it)")
    if tolerance == CI95:
        return None if model.high >= bound - EPSILON else f"{scored}, its 95% interval entirely below {because}"
    if model.score >= bound - tolerance - EPSILON:
        return None
    slack = f", less the tolerance {tolerance:g}" if tolerance else ""
    return f"{scored}, below {because}{slack}"
