"""Math reward with symbolic equivalence, through Hugging Face's math-verify package (the `math` extra).

``math_verify`` takes the completion's final answer as ``math_answer`` finds it (the
last ``\\boxed{}``, else the last answer statement, else the last number), falling back
to math-verify's own extraction when that does not parse, and compares it with the
reference by SymPy equivalence: ``x+1`` equals
``1+x``, ``\\sqrt{8}`` equals ``2\\sqrt{2}``, intervals, sets and matrices compare as
such. A reference that is a worked solution (GSM8K's ``####``, a MATH ``\\boxed``) is
first reduced to its final answer as ``math_answer`` reduces it.

Needs ``pip install 'barctl[math]'``; without it the grader raises a BarctlError
naming the extra. Parsing and comparison each stop after ``TIMEOUT_S`` seconds (math-verify
uses SIGALRM for this, which only the main thread may; elsewhere there is no limit).
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

from barctl.errors import BarctlError
from barctl.rewards.completion import completion_text
from barctl.rewards.math_answer import final_answer, reference_answer

TIMEOUT_S = 5
EXTRA_HINT = "the math_verify grader needs the math-verify package: pip install 'barctl[math]'"


def available() -> bool:
    """Whether the math-verify package is installed (without importing it)."""
    return importlib.util.find_spec("math_verify") is not None


def math_verify(prompts: list, completions: list, answer: list, **kwargs: Any) -> list[float]:
    """1.0 for each completion whose final answer is mathematically equivalent to ``answer``, else 0.0."""
    try:
        from math_verify import parse, verify
    except ImportError as exc:
        raise BarctlError(EXTRA_HINT) from exc
    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        gold_text = reference_answer(reference)
        gold = parse(f"${gold_text}$", parsing_timeout=timeout) or parse(gold_text, parsing_timeout=timeout)
        text = completion_text(completion)
        stated = final_answer(text)
        predicted = parse(f"${stated.strip().strip('$')}$", parsing_timeout=timeout) if stated is not None else []
        predicted = predicted or parse(text, parsing_timeout=timeout)
        matched = bool(gold) and bool(predicted) and verify(gold, predicted, timeout_seconds=timeout)
        rewards.append(1.0 if matched else 0.0)
    return rewards
