"""Math reward: the completion's final answer equals the reference answer.

The final answer is, in this order of precedence:

1. the content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces allowed);
2. else the last answer statement: "answer is", "answer:", "answer =" (so "The final
   answer is", "**Answer:**"), or GSM8K's ``#### 42``; a markdown heading such as
   ``#### Final answer`` is not one. The statement runs to the end of its sentence
   (or, when nothing follows the marker on its line, is the next line);
3. else the last number of the text, markdown headings left out.

Within the answer the *final value* counts: the part after the last ``=`` ("5 + 7 =
12" is 12), with negated values dropped ("not 12, it is 15" is 15). One number there is
the value; several numbers are evaluated as arithmetic when that is all they are
("5 + 7"), else the first is taken ("12 apples, 3 more than 9"), except that a hedge
("12 or 13") has no value. No number: the answer is compared as a normalised string
(symbolic answers such as ``x^{2}+1``, tuples such as ``(1, 2)``).

Normalised away: ``$``, ``\\(...\\)``, markdown emphasis, LaTeX spacing and
``\\left``/``\\right``, ``\\text{...}`` units, degrees, a trailing period, the unicode
minus, thousands separators ("1,234", "1{,}234", "1\\,234"). ``\\frac{a}{b}``,
``\\dfrac``, ``\\tfrac`` and ``\\frac12`` become fractions. Numbers compare exactly
(``3/4`` == ``0.75``, ``12.0`` == ``12``), within a relative 1e-6 for decimals that
round a fraction (``0.3333333`` == ``1/3``); a percentage matches its number or its
share ("25%" matches 25 and 0.25). A reference that is itself a worked solution (a
GSM8K ``####`` line, a MATH ``\\boxed``) is reduced the same way.

Known limits: no symbolic algebra (``x+1`` vs ``1+x``, intervals, sets, matrices: use
the ``math_verify`` grader), and the first-of-several-numbers rule can misread a prose
answer that restates other quantities.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction
from typing import Any

from barctl.rewards.completion import completion_text

TOLERANCE = 1e-6

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_STATEMENT = re.compile(r"\banswer\s*(?:is\b|:|=)\s*:?|####(?=[ \t]*(?:[-+\u2212$.\d]|\\\())", re.IGNORECASE)
_NOT_A_VALUE = re.compile(
    r"\W*(?:correct|right|wrong|incorrect|below|as follows|the following|given|shown|clear|obvious)\b", re.IGNORECASE)
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t].*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*(?:\d+(?:\.\d+)?|\.\d+))?\s*%?")
_NEGATED = re.compile(r"\bnot\s+(?:equal\s+to\s+|exactly\s+|just\s+)?[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?%?",
                      re.IGNORECASE)
_HEDGE = re.compile(r"\b(?:or|either)\b|\\pm|±", re.IGNORECASE)
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_DIGITS = re.compile(r"\\[dt]?frac\s*(\d)(\d)")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<=\d)(?:,|\{,\}|\\,|\\ |\u2009|\u202f)(?=\d{3}(?!\d))")
_SYMBOLIC = re.compile(r"\\[a-zA-Z]|[\^_{}]|[a-zA-Z]\s*[-+*/=(]|[-+*/(]\s*[a-zA-Z]|\d[a-zA-Z]\b")
_ARITHMETIC = re.compile(r"[\d.\s+\-*/()%]+")
_NOISE = ("\\$", "$", "\\(", "\\)", "\\[", "\\]", "\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "**", "`",
          "^\\circ", "^{\\circ}", "\\circ", "°", "\\displaystyle")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox``) whose braces balance, or None."""
    for start in reversed([m.end() for m in _BOXED.finditer(text)]):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None


def _statement(text: str, start: int) -> str:
    """The answer statement after a marker: the rest of its sentence, or the next line when its line is empty."""
    rest = text[start:]
    line, _, after = rest.partition("\n")
    if not line.strip(" \t*:"):
        rest = after.lstrip("\n").strip()
    end = _SENTENCE_END.search(rest)
    return rest[: end.start()] if end else rest


def final_answer(text: str) -> str | None:
    """The final answer of a worked solution, or None when it states none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for marker in reversed(list(_STATEMENT.finditer(text))):
        statement = _statement(text, marker.end())
        if statement.strip() and not _NOT_A_VALUE.match(statement):  # "the answer is correct" states none
            return statement
    numbers = _NUMBER.findall(normalize(_HEADING.sub("", text)))
    return numbers[-1].strip() if numbers else None


def normalize(answer: str) -> str:
    """The answer without formatting that does not change its value."""
    answer = answer.replace("\u2212", "-").replace("\\%", "%").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    answer = _FRAC_DIGITS.sub(r"\\frac{\1}{\2}", answer)
    while _FRAC.search(answer):
        answer = _FRAC.sub(r"(\1)/(\2)", answer)
    answer = _TEXT.sub(r"\1", answer)
    answer = _THOUSANDS.sub("", answer)
    for noise in _NOISE:
        answer = answer.replace(noise, "")
    answer = answer.strip().rstrip(".").strip()
    return re.sub(r"\((-?[\d.]+)\)", r"\1", answer)  # (3)/(4) -> 3/4


def as_number(answer: str) -> Fraction | None:
    """A normalised number ("3/4", "-1.5", "25%") as an exact value, or None when it is not one."""
    answer = "".join(answer.split())
    percent = answer.endswith("%")
    try:
        value = Fraction(answer.rstrip("%"))
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def _arithmetic(expression: str) -> Fraction | None:
    """The value of a plain arithmetic expression of numbers, + - * / and parentheses, or None."""
    if not _ARITHMETIC.fullmatch(expression) or "%" in expression:
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(node)

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError):
        return None


def final_value(answer: str) -> str | None:
    """The value an answer states: one number (as written), or the normalised text; None for a hedge."""
    answer = normalize(answer)
    answer = answer.rsplit("=", 1)[-1].strip()
    answer = _NEGATED.sub(" ", answer).strip(" ,;:")
    numbers = [n.strip() for n in _NUMBER.findall(answer)]
    if _SYMBOLIC.search(answer) or not numbers:
        return answer or None
    if len(numbers) == 1:
        return numbers[0]
    if _HEDGE.search(answer):
        return None
    computed = _arithmetic(answer)
    if computed is not None:
        return str(computed)
    return numbers[0] if re.search("[a-zA-Z]", answer) else answer  # prose restating numbers; else a tuple


def _close(a: Fraction, b: Fraction) -> bool:
    return a == b or abs(a - b) <= TOLERANCE * max(Fraction(1), abs(b))


def answers_match(predicted: str, reference: str) -> bool:
    """Whether two final answers state the same value (numerically when both are numbers)."""
    pred, ref = final_value(predicted), final_value(reference)
    if pred is None or ref is None:
        return False
    pred_number, ref_number = as_number(pred), as_number(ref)
    if pred_number is None or ref_number is None:
        return pred_number is None and ref_number is None and "".join(pred.split()) == "".join(ref.split())
    candidates = {pred_number}
    if pred.endswith("%") != ref.endswith("%"):  # "25%" vs 25 or 0.25
        candidates.add(pred_number * 100 if pred.endswith("%") else pred_number / 100)
    return any(_close(candidate, ref_number) for candidate in candidates)


def reference_answer(answer: Any) -> str:
    """A reference answer, reduced to its final answer when it is a worked solution."""
    text = str(answer)
    if last_boxed(text) is not None or _STATEMENT.search(text):
        return final_answer(text) or text
    return text


def math_answer(prompts: list, completions: list, answer: list, **kwargs: Any) -> list[float]:
    """1.0 for each completion whose final answer equals ``answer``, else 0.0."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        predicted = final_answer(completion_text(completion))
        matched = predicted is not None and answers_match(predicted, reference_answer(reference))
        rewards.append(1.0 if matched else 0.0)
    return rewards
