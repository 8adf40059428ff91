"""math_answer against replies that a careless grader misreads.

Cases follow how lm-evaluation-harness (GSM8K's "#### n" and last-number rules, Minerva
MATH's last \\boxed and "The final answer is" rule) and math-verify (final value of an
equation, fractions, percentages, units) judge.
"""

from __future__ import annotations

import pytest

from barctl.rewards.math_answer import final_answer, final_value, math_answer


def score(text: str, answer) -> float:
    return math_answer(["q"], [text], answer=[answer])[0]


PASSES = [
    # the final value of an equation, not its first number
    ("The answer is 5 + 7 = 12.", "12"),
    # a negated value is not the answer
    ("The answer is not 12, it is 15.", "15"),
    ("The answer is 15, not 12.", "15"),
    # the last boxed wins, nested braces
    (r"First \boxed{3}, then I corrected it: \boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{\dfrac{3}{4}}", "3/4"),
    (r"so \fbox{7}", "7"),
    (r"$\frac12$ of the cake", "0.5"),
    # GSM8K's convention, after a heading that is not an answer
    ("#### Final answer\nShe pays 5 * 8 = 40 dollars.\n#### 40", "40"),
    ("## Step 1\nShe has 30 + 12 = 42 apples.\n\n### Final answer\n", "42"),
    ("### Final Answer:\n\n42", "42"),
    # unicode minus, thousands separators, decimals and integers
    ("The answer is \u22125.", "-5"),
    ("Answer: 1,234,567", "1234567"),
    ("The answer is $1{,}234$.", "1234"),
    ("The answer is 12.0", "12"),
    ("The answer is 12", "12.00"),
    # percentages, as a number or a share
    ("The discount is 25%.", "25"),
    ("The answer is 25\\%.", "0.25"),
    ("The answer is 0.25", "25%"),
    # units, currency, trailing period, markdown
    ("**Answer:** $18.90 per hour.", "18.9"),
    (r"The answer is $90^\circ$.", "90"),
    (r"\boxed{42 \text{ apples}}", "42"),
    ("The answer is 12 apples, which is 3 more than 9.", "12"),
    # symbolic and tuple answers as normalised strings
    (r"\boxed{x^{2} + 1}", "x^{2}+1"),
    ("The answer is (1, 2).", "(1,2)"),
    # the last statement wins over earlier ones
    ("I first thought the answer is 10. Checking again, the answer is 11.", "11"),
    ("Let me check that the answer is correct: 6 * 7 = 42.", "42"),
    # a worked reference is reduced to its final answer
    ("The answer is 72.", "Natalia sold 48/2 = 24 clips in May.\n#### 72"),
    ("The answer is 72.", r"So she sold $\boxed{72}$ clips."),
    ("about 1/3", "0.3333333"),
]

FAILS = [
    # the first number after "answer is" is not the answer
    ("The answer is 5 + 7 = 12.", "5"),
    ("The answer is not 12, it is 15.", "12"),
    # an earlier box does not count
    (r"\boxed{42} hmm, no: \boxed{43}", "42"),
    # hedges have no value
    ("The answer is 12 or 13.", "12"),
    ("The answer is either 12 or 13.", "13"),
    # a heading is not an answer and its number is not the last number
    ("The total is 41.\n\n#### Step 42", "42"),
    # a different value in every format
    ("The answer is 1,234", "1235"),
    (r"\boxed{\frac{3}{4}}", "0.7"),
    ("The answer is 25%.", "0.5"),
    ("The answer is -5.", "5"),
    # symbolic answers must match as a whole
    (r"\boxed{x+2}", "x+1"),
    (r"\boxed{y+1}", "x+1"),
    (r"\boxed{2\sqrt{2}}", "2"),
    ("The answer is (1, 3).", "(1, 2)"),
    # no answer at all
    ("no number here", "1"),
    ("", "0"),
    ("The answer is below.", "3"),
    # a number in the question restated is not an answer when another is final
    ("You asked about 12 apples; after eating 3, 9 remain.", "12"),
]


@pytest.mark.parametrize("text, answer", PASSES)
def test_final_answers_that_match(text, answer):
    assert score(text, answer) == 1.0, final_answer(text)


@pytest.mark.parametrize("text, answer", FAILS)
def test_final_answers_that_do_not_match(text, answer):
    assert score(text, answer) == 0.0, final_answer(text)


def test_conversational_completion_and_numeric_reference():
    completion = [{"role": "assistant", "content": "So the answer is 3/4."}]
    assert math_answer(["q"], [completion], answer=[0.75]) == [1.0]
    assert math_answer(["q"], [completion], answer=[1]) == [0.0]


def test_final_value_reads_arithmetic_and_drops_prose():
    assert final_value("5 + 7") == "12"
    assert final_value("(2 + 3) * 4 apples") == "2"  # not plain arithmetic: prose, the first number
    assert final_value("2 \\pm 1") == "2 \\pm 1"  # symbolic, compared as a whole
    assert final_value("12 or 13") is None
