"""Tool-call reward: the completion calls the expected functions with the expected arguments.

Format of a call, in the completion and in ``ground_truth`` alike: a JSON object
``{"name": "f", "arguments": {...}}`` (``arguments`` may also be a JSON string), or a
JSON list of such objects. In the completion the JSON may sit in one or more
``<tool_call>...</tool_call>`` tags (their calls are concatenated), else in the last
```` ```json ```` fence, else be the whole reply. A conversational completion whose
assistant message carries ``tool_calls`` (as TRL's response parsing produces) is read
from that field instead.

The reward is 1.0 when the calls match as a multiset (order of calls and of arguments
is irrelevant; numbers compare numerically, so 2 == 2.0, but True != 1), else 0.0.
An unparseable completion scores 0.0, except that an empty ground truth (``[]``, no
call expected) is matched by a reply with no tool call.

BFCL-style alternatives: a ground-truth call with ``"alternatives": true`` lists the
acceptable values of each argument, e.g. ``{"name": "f", "arguments": {"x": [1, 2]},
"alternatives": true}`` accepts x=1 or x=2; a list containing ``""`` also accepts the
argument being left out. A list-valued argument is written as a list of lists there.
"""

from __future__ import annotations

import json
import re
from typing import Any

from barctl.errors import BarctlError
from barctl.rewards.text import assistant_message, completion_text

_TAGGED = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?[ \t]*\n(.*?)```", re.DOTALL)


def _calls(value: Any) -> list[dict] | None:
    """Normalised calls ``{"name", "arguments", "alternatives"}`` or None when malformed."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", {})
        if isinstance(arguments, str):
            arguments = _json(arguments)
        if not isinstance(arguments, dict):
            return None
        calls.append(
            {"name": item["name"], "arguments": arguments, "alternatives": item.get("alternatives") is True}
        )
    return calls


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_tool_calls(completion: Any) -> list[dict] | None:
    """The calls a completion makes, or None when it contains no parseable call."""
    message = assistant_message(completion)
    if message.get("tool_calls"):
        return _calls([call.get("function", call) for call in message["tool_calls"]])
    text = completion_text(completion)
    tagged = _TAGGED.findall(text)
    if tagged:
        calls: list[dict] = []
        for block in tagged:
            parsed = _calls(_json(block))
            if parsed is None:
                return None
            calls += parsed
        return calls
    fences = _FENCE.findall(text)
    return _calls(_json(fences[-1] if fences else text.strip()))


def values_equal(a: Any, b: Any) -> bool:
    """JSON equality with numbers compared by value (2 == 2.0) and booleans kept apart."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _call_matches(predicted: dict, expected: dict) -> bool:
    if predicted["name"] != expected["name"]:
        return False
    got, want = predicted["arguments"], expected["arguments"]
    if not expected["alternatives"]:
        return values_equal(got, want)
    if not got.keys() <= want.keys():
        return False
    for name, options in want.items():
        options = options if isinstance(options, list) else [options]
        if name not in got:
            if "" not in options:
                return False
        elif not any(values_equal(got[name], option) for option in options):
            return False
    return True


def _multiset_match(predicted: list[dict], expected: list[dict]) -> bool:
    if len(predicted) != len(expected):
        return False
    if not expected:
        return True
    first, rest = expected[0], expected[1:]
    return any(
        _call_matches(call, first) and _multiset_match(predicted[:i] + predicted[i + 1 :], rest)
        for i, call in enumerate(predicted)
    )


def _ground_truth(value: Any) -> list[dict]:
    calls = _calls(_json(value) if isinstance(value, str) else value)
    if calls is None:
        raise BarctlError(f"tool_call reward: ground_truth is not a call or a list of calls: {value!r}")
    return calls


def tool_call(prompts: list, completions: list, ground_truth: list, **kwargs: Any) -> list[float]:
    """1.0 for each completion whose tool calls match ``ground_truth``, else 0.0."""
    rewards = []
    for completion, truth in zip(completions, ground_truth, strict=True):
        expected = _ground_truth(truth)
        predicted = parse_tool_calls(completion)
        if predicted is None:
            matched = not expected
        else:
            matched = _multiset_match(predicted, expected)
        rewards.append(1.0 if matched else 0.0)
    return rewards
