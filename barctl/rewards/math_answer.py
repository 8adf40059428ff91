"""Math reward: the completion's final answer equals the reference answer.

The final answer is the content of the last ``\\boxed{...}`` (nested braces allowed);
else the rest of the line after the last "answer is", "Answer:" or "####"; else the
last number in the text. A reference that itself contains ``\\boxed`` or one of those
markers (a GSM8K or MATH solution) is reduced the same way. Both sides are normalised
(``$``, LaTeX spacing, thousands separators, a trailing period and whitespace go;
``\\frac{a}{b}`` becomes ``a/b``) and compared as numbers when both parse as one
(``3/4`` == ``0.75``, ``42`` == ``42.0``, tolerance 1e-6), else as strings.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from barctl.rewards.text import completion_text

TOLERANCE = 1e-6

_MARKER = re.compile(r"(?:answer\s+is\s*:?|answer\s*:|####)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|[-+]?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces balance, or None."""
    for start in reversed([m.end() for m in re.finditer(r"\\boxed\s*\{", text)]):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None


def final_answer(text: str) -> str | None:
    """The final answer of a worked solution, or None when it states none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    markers = list(_MARKER.finditer(text))
    if markers:
        return text[markers[-1].end() :].strip().split("\n", 1)[0]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize(answer: str) -> str:
    """The answer without formatting that does not change its value."""
    answer = _FRAC.sub(r"\1/\2", answer)
    for noise in ("\\$", "$", "\\!", "\\,", "\\;", "\\left", "\\right"):
        answer = answer.replace(noise, "")
    answer = _THOUSANDS.sub("", answer)
    return "".join(answer.split()).rstrip(".")


def as_number(answer: str) -> Fraction | None:
    """The normalised answer as an exact number, or None when it is not one."""
    try:
        return Fraction(answer)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, reference: str) -> bool:
    """Whether two final answers are equal after normalisation (numerically when possible)."""
    pred, ref = normalize(predicted), normalize(reference)
    ref_number = as_number(ref)
    if ref_number is None:
        return pred == ref
    pred_number = as_number(pred)
    if pred_number is None:  # "42 apples": fall back to the first number stated
        first = _NUMBER.search(pred)
        pred_number = as_number(normalize(first.group())) if first else None
    return pred_number is not None and abs(pred_number - ref_number) <= TOLERANCE


def _reference(answer: Any) -> str:
    text = str(answer)
    if last_boxed(text) is not None or _MARKER.search(text):
        return final_answer(text) or text
    return text


def math_answer(prompts: list, completions: list, answer: list, **kwargs: Any) -> list[float]:
    """1.0 for each completion whose final answer equals ``answer``, else 0.0."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        predicted = final_answer(completion_text(completion))
        matched = predicted is not None and answers_match(predicted, _reference(reference))
        rewards.append(1.0 if matched else 0.0)
    return rewards
