"""The math_verify grader (math-verify, the `math` extra): symbolic equivalence, and its absence."""

from __future__ import annotations

import builtins

import pytest

from barctl.errors import BarctlError
from barctl.rewards import resolve
from barctl.rewards.symbolic import available, math_verify

needs_math_verify = pytest.mark.skipif(not available(), reason="math-verify is not installed (pip install 'barctl[math]')")

PASSES = [
    (r"So the result is \boxed{1+x}.", "x+1"),
    (r"The final answer is $2\sqrt{2}$.", r"\sqrt{8}"),
    (r"\boxed{x^2-1}", "(x-1)(x+1)"),
    (r"\boxed{\frac{3}{4}}", "0.75"),
    (r"\boxed{(1,2)}", "(1, 2)"),
    (r"\boxed{[0, 1)}", "[0,1)"),
    ("The answer is 5 + 7 = 12.", "12"),
    ("The answer is 1,234", "1234"),
    (r"First \boxed{3}, then \boxed{4}", "4"),
    ("The answer is 12", "She sold 24 / 2 = 12.\n#### 12"),
    (r"\boxed{\frac{\pi}{2}}", r"\pi/2"),
    (r"\boxed{\begin{pmatrix} 1 & 2 \end{pmatrix}}", r"\begin{pmatrix}1 & 2\end{pmatrix}"),
]

FAILS = [
    ("The answer is 13.", "12"),
    (r"\boxed{x-1}", "x+1"),
    (r"\boxed{[0, 1]}", "[0,1)"),
    (r"\boxed{(2,1)}", "(1, 2)"),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}"),
    (r"\boxed{4} hmm, no: \boxed{3}", "4"),
    ("", "3"),
    ("I do not know.", "3"),
    (r"\boxed{y+1}", "x+1"),
    (r"\boxed{0.7}", "3/4"),
]


@needs_math_verify
@pytest.mark.parametrize("text, answer", PASSES)
def test_equivalent_answers(text, answer):
    assert math_verify(["q"], [text], answer=[answer]) == [1.0]


@needs_math_verify
@pytest.mark.parametrize("text, answer", FAILS)
def test_different_answers(text, answer):
    assert math_verify(["q"], [text], answer=[answer]) == [0.0]


@needs_math_verify
def test_conversational_completions_and_resolution():
    assert resolve("math_verify") is math_verify
    completion = [{"role": "assistant", "content": r"It is \boxed{2}."}]
    assert math_verify(["q"], [completion], answer=[2]) == [1.0]


def test_missing_package_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def without_math_verify(name, *args, **kwargs):
        if name == "math_verify" or name.startswith("math_verify."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_math_verify)
    with pytest.raises(BarctlError, match=r"pip install 'barctl\[math\]'"):
        math_verify(["q"], ["1"], answer=["1"])
