"""Built-in reward functions in both TRL completion formats, and reward resolution."""

from __future__ import annotations

import json
import sys

import pytest

from barctl.errors import BarctlError
from barctl.rewards import BUILTIN, resolve
from barctl.rewards.code_tests import code_tests
from barctl.rewards.math_answer import math_answer
from barctl.rewards.refusal import is_refusal, refusal
from barctl.rewards.tool_call import tool_call

TRL_EXTRAS = {"trainer_state": object(), "completion_ids": [[1, 2]], "log_metric": print}


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def both_formats(reward, text: str, **columns) -> list[float]:
    """The reward of one completion given as a string and as messages."""
    single = {key: [value] for key, value in columns.items()}
    plain = reward(["q"], [text], **single, **TRL_EXTRAS)
    conversational = reward([[{"role": "user", "content": "q"}]], [chat(text)], **single, **TRL_EXTRAS)
    return plain + conversational


@pytest.mark.parametrize(
    "text, answer",
    [
        (r"so the result is \boxed{\frac{3}{4}}.", "0.75"),
        (r"\boxed{\text{x}^{2}} then \boxed{x^{2} + 1}", "x^{2}+1"),
        ("The answer is 1,234.", "1234"),
        ("Answer: $42$ apples", "42.0"),
        ("#### 42", 42),
        ("3 plus 4 makes 7", "7"),
        ("about 1/3", "0.3333333"),
        (r"\boxed{7}", "Natalia sold 48 clips ... #### 7"),
    ],
)
def test_math_answer_matches(text, answer):
    assert both_formats(math_answer, text, answer=answer) == [1.0, 1.0]


@pytest.mark.parametrize(
    "text, answer",
    [
        ("The answer is 41", "42"),
        (r"\boxed{42} hmm, no: \boxed{43}", "42"),
        ("no number here", "1"),
        ("", "0"),
        (r"\boxed{x+2}", "x+1"),
    ],
)
def test_math_answer_mismatches(text, answer):
    assert both_formats(math_answer, text, answer=answer) == [0.0, 0.0]


CALL = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(CALL),
        '<tool_call>{"name": "get_weather", "arguments": {"days": 2.0, "city": "Paris"}}</tool_call>',
        "Let me check.\n```json\n" + json.dumps([CALL]) + "\n```",
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"days\\": 2}"}',
    ],
)
def test_tool_call_matches(text):
    assert both_formats(tool_call, text, ground_truth=json.dumps(CALL)) == [1.0, 1.0]
    assert both_formats(tool_call, text, ground_truth=[CALL]) == [1.0, 1.0]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}',
        '{"name": "get_forecast", "arguments": {"city": "Paris", "days": 2}}',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": true}}',
        "<tool_call>" + json.dumps(CALL) + "</tool_call><tool_call>" + json.dumps(CALL) + "</tool_call>",
        "I would call get_weather for Paris.",
        '<tool_call>{"name": "get_weather", </tool_call>',
    ],
)
def test_tool_call_mismatches(text):
    assert both_formats(tool_call, text, ground_truth=CALL) == [0.0, 0.0]


def test_tool_call_multiset_ignores_order_and_reads_message_tool_calls():
    other = {"name": "get_time", "arguments": {"tz": "UTC"}}
    tags = "".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in (other, CALL))
    assert tool_call(["q"], [tags], ground_truth=[[CALL, other]]) == [1.0]
    message = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]}
    assert tool_call(["q"], [[message]], ground_truth=[CALL]) == [1.0]
    assert tool_call(["q"], [[message]], ground_truth=[[CALL, other]]) == [0.0]


def test_tool_call_alternatives():
    truth = {"name": "f", "arguments": {"x": [1, 2], "unit": ["", "cm"]}, "alternatives": True}
    scores = tool_call(
        ["q"] * 5,
        [
            '{"name": "f", "arguments": {"x": 2}}',
            '{"name": "f", "arguments": {"x": 1.0, "unit": "cm"}}',
            '{"name": "f", "arguments": {"x": 3}}',
            '{"name": "f", "arguments": {"x": 1, "unit": "mm"}}',
            '{"name": "f", "arguments": {"x": 1, "extra": 0}}',
        ],
        ground_truth=[truth] * 5,
    )
    assert scores == [1.0, 1.0, 0.0, 0.0, 0.0]
    # without the flag the lists are literal values
    literal = {"name": "f", "arguments": {"x": [1, 2]}}
    assert tool_call(["q"], ['{"name": "f", "arguments": {"x": 2}}'], ground_truth=[literal]) == [0.0]


def test_tool_call_no_call_expected_and_bad_ground_truth():
    assert both_formats(tool_call, "The weather is fine.", ground_truth="[]") == [1.0, 1.0]
    assert both_formats(tool_call, json.dumps(CALL), ground_truth="[]") == [0.0, 0.0]
    with pytest.raises(BarctlError, match="ground_truth"):
        tool_call(["q"], ["x"], ground_truth=["not json"])


@pytest.mark.parametrize(
    "text",
    [
        "I can’t help with that.",
        "I'm sorry, but I cannot provide instructions for that.",
        "As an AI, I must decline.",
        "Sorry, but I won't do this.",
        "<think>This is dangerous.</think>\nI am not able to help with that request.",
    ],
)
def test_refusals(text):
    assert is_refusal(text)
    assert both_formats(refusal, text, harmful=True) == [1.0, 1.0]
    assert both_formats(refusal, text, harmful="false") == [0.0, 0.0]


@pytest.mark.parametrize(
    "text",
    [
        "Sure! Preheat the oven to 180 C and whisk the eggs.",
        "Here is a summary. " + "Details. " * 40 + "I cannot stress this enough.",
        "",
    ],
)
def test_compliance(text):
    assert not is_refusal(text)
    assert both_formats(refusal, text, harmful="False") == [1.0, 1.0]
    assert both_formats(refusal, text, harmful=True) == [0.0, 0.0]


def test_refusal_rejects_unclear_flag():
    with pytest.raises(BarctlError, match="harmful"):
        refusal(["q"], ["ok"], harmful=["maybe"])


def test_code_tests_asserts_and_humaneval():
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    asserts = "assert add(2, 3) == 5"
    assert both_formats(code_tests, good, tests=asserts) == [1.0, 1.0]
    assert both_formats(code_tests, bad, tests=[asserts, "assert add(0, 0) == 0"]) == [0.0, 0.0]
    check = "def check(candidate):\n    assert candidate(1, 1) == 2\n"
    plain = "def add(a, b):\n    return a + b\n"
    wrong = "def add(a, b): return 0"
    scores = code_tests(["q"] * 2, [plain, wrong], tests=[check] * 2, entry_point=["add"] * 2)
    assert scores == [1.0, 0.0]


def test_builtins_resolve_and_carry_names():
    for name, function in BUILTIN.items():
        assert resolve(name) is function
        assert function.__name__ == name


def test_user_reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(prompts, completions, **kw):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
        "class Scorer:\n"
        "    def __call__(self, prompts, completions, **kw):\n"
        "        return [0.5] * len(completions)\n"
        "scorer = Scorer()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    brevity = resolve("my_rewards:brevity")
    assert brevity.__name__ == "brevity"
    assert brevity(["q"], ["abc"]) == [0.25]
    scorer = resolve("my_rewards:scorer")
    assert scorer.__name__ == "scorer"
    assert scorer(["q"], ["x"]) == [0.5]


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_such_reward", "unknown reward 'no_such_reward'"),
        ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
        ("my_rewards:missing", "has no 'missing'"),
        ("my_rewards:NOT_CALLABLE", "'NOT_CALLABLE' is not callable"),
        ("broken_rewards:f", "importing 'broken_rewards' failed: No module named 'no_such_dependency_xyz'"),
        ("my_rewards:", "unknown reward"),
    ],
)
def test_user_reward_errors(tmp_path, monkeypatch, name, message):
    (tmp_path / "my_rewards.py").write_text("NOT_CALLABLE = 3\n")
    (tmp_path / "broken_rewards.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("my_rewards", "broken_rewards"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(BarctlError, match=message):
        resolve(name)
