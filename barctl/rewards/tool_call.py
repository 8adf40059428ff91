"""Tool-call reward: the completion calls the expected functions with the expected arguments.

Calls in the completion: one or more ``<tool_call>{json}</tool_call>`` tags (their calls
are concatenated), else the last ```` ```json ```` fence, else the whole reply, as a JSON
call ``{"name": "f", "arguments": {...}}`` (``arguments`` may be a JSON string) or a list
of them; else a Python call list as BFCL prompts for, ``[f(x=1), g(y='a')]``. A
conversational completion whose assistant message carries ``tool_calls`` (as TRL's
response parsing produces) is read from that field.

``ground_truth`` (a JSON string or the value) takes three forms:

- barctl's single answer: a call or a list of calls, as above;
- barctl's alternatives: ``{"name": "f", "arguments": {"x": [1, 2]}, "alternatives": true}``
  lists the acceptable values of each argument;
- BFCL's possible answers: ``[{"f": {"x": [1, 2], "unit": ["", "cm"]}}]``.

In both alternative forms ``""`` among the values lets the argument be left out, and a
dict-valued argument lists alternatives per key, as BFCL's checker reads it.

Arguments compare as BFCL's AST checker compares them: strings ignoring case, spaces
and the punctuation ``, . / - _ * ^`` (and ``'`` reads as ``"``), numbers by value (an
int is a float, a bool is not a number), lists in order and dicts by key, recursively.
Calls match as a multiset (their order is free); an extra or a missing call fails. An
empty ground truth (``[]``, no call expected) is matched by a reply without a call.

With the function schemas (a ``functions`` or ``tools`` column: BFCL function docs or
OpenAI tools, JSON or the value), also as BFCL: a required argument left out or one the
schema does not declare fails, and a ``float``/``number`` argument accepts an int but an
``integer`` one does not accept a float. Beyond BFCL, an optional argument at its schema
``default`` may be given where the ground truth leaves it out (or lets it be left out),
and left out where the ground truth wants the default.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from barctl.errors import BarctlError
from barctl.rewards.completion import assistant_message, completion_text

_TAGGED = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE = re.compile(r"```(?:json|python)?[ \t]*\n(.*?)```", re.DOTALL)
_BFCL_PUNCTUATION = re.compile(r"[ ,./\-_*^]")
_NO_DEFAULT = object()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _calls(value: Any, possible_answers: bool = False) -> list[dict] | None:
    """Calls ``{"name", "arguments", "alternatives"}``, or None when malformed.

    ``possible_answers``: also read BFCL's ``{"f": {"x": [1, 2]}}`` (ground truth only).
    """
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict):
            return None
        if possible_answers and "name" not in item and len(item) == 1:
            (name, arguments), = item.items()
            item = {"name": name, "arguments": arguments, "alternatives": True}
        if not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", {})
        if isinstance(arguments, str):
            arguments = _json(arguments)
        if not isinstance(arguments, dict):
            return None
        calls.append({"name": item["name"], "arguments": arguments, "alternatives": item.get("alternatives") is True})
    return calls


def _python_calls(text: str) -> list[dict] | None:
    """``[f(x=1), g(y='a')]`` or ``f(x=1)`` with literal keyword arguments, as BFCL's prompt format has them."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        try:
            name = ast.unparse(node.func)
            arguments = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except ValueError:
            return None
        if len(arguments) != len(node.keywords):
            return None
        calls.append({"name": name, "arguments": _jsonable(arguments), "alternatives": False})
    return calls


def _jsonable(value: Any) -> Any:
    """Python literals as JSON has them: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _parse_text(text: str) -> list[dict] | None:
    text = text.strip()
    parsed = _json(text)
    return _calls(parsed) if parsed is not None else _python_calls(text)


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
    return _parse_text(fences[-1] if fences else text)


def standardize(text: str) -> str:
    """A string as BFCL's checker compares it: lower case, without spaces and ``,./-_*^``, ``'`` as ``"``."""
    return _BFCL_PUNCTUATION.sub("", text).lower().replace("'", '"')


def values_equal(got: Any, want: Any, schema: dict | None = None) -> bool:
    """Whether an argument value matches the expected one, as BFCL compares them (``schema``: its JSON schema)."""
    schema = schema or {}
    kind = schema.get("type")
    if isinstance(got, bool) or isinstance(want, bool):
        return got is want
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        return not (kind == "integer" and isinstance(got, float)) and got == want
    if isinstance(got, str) and isinstance(want, str):  # a string where the schema wants another type is a
        return standardize(got) == standardize(want) if kind in (None, "string", "any") else got == want  # variable
    if isinstance(got, list) and isinstance(want, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else None
        return len(got) == len(want) and all(values_equal(g, w, items) for g, w in zip(got, want))
    if isinstance(got, dict) and isinstance(want, dict):
        properties = schema.get("properties") or {}
        return got.keys() == want.keys() and all(values_equal(got[k], want[k], properties.get(k)) for k in got)
    return type(got) is type(want) and got == want


def _option_matches(got: Any, option: Any, schema: dict | None) -> bool:
    """One acceptable value of BFCL's possible answers; dicts in it list alternatives per key."""
    if isinstance(option, dict) and isinstance(got, dict):
        properties = (schema or {}).get("properties") or {}
        return _arguments_match(got, option, properties, alternatives=True)
    if isinstance(option, list) and isinstance(got, list) and any(isinstance(o, dict) for o in option):
        items = (schema or {}).get("items")
        return len(got) == len(option) and all(_option_matches(g, o, items) for g, o in zip(got, option))
    return values_equal(got, option, schema)


def _arguments_match(got: dict, want: dict, properties: dict, *, alternatives: bool) -> bool:
    for name in got.keys() | want.keys():
        spec = properties.get(name) if isinstance(properties.get(name), dict) else None
        default = spec.get("default", _NO_DEFAULT) if spec else _NO_DEFAULT
        options: list[Any]
        if name not in want:
            options = []
        elif alternatives:
            options = want[name] if isinstance(want[name], list) else [want[name]]
        else:
            options = [want[name]]
        optional = alternatives and "" in options  # BFCL: "" among the values lets it be left out
        values = [o for o in options if not (alternatives and o == "")]
        at_default = default is not _NO_DEFAULT
        if name not in got:  # left out: fine when optional, or when what is wanted is the default
            if not optional and not (at_default and any(values_equal(default, v, spec) for v in values)):
                return False
        elif not any((_option_matches if alternatives else values_equal)(got[name], v, spec) for v in values):
            # given at its default where the ground truth leaves it out, or lets it be left out
            if not (at_default and (not options or optional) and values_equal(got[name], default, spec)):
                return False
    return True


def _call_matches(predicted: dict, expected: dict, schemas: dict[str, dict]) -> bool:
    if predicted["name"] != expected["name"]:
        return False
    schema = schemas.get(expected["name"])
    properties = (schema or {}).get("properties") or {}
    required = (schema or {}).get("required") or []
    if schema is not None and not set(required) <= predicted["arguments"].keys() <= properties.keys():
        return False
    return _arguments_match(predicted["arguments"], expected["arguments"], properties,
                            alternatives=expected["alternatives"])


def _multiset_match(predicted: list[dict], expected: list[dict], schemas: dict[str, dict]) -> bool:
    if len(predicted) != len(expected):
        return False
    if not expected:
        return True
    first, rest = expected[0], expected[1:]
    return any(
        _call_matches(call, first, schemas) and _multiset_match(predicted[:i] + predicted[i + 1:], rest, schemas)
        for i, call in enumerate(predicted)
    )


def _ground_truth(value: Any) -> list[dict]:
    calls = _calls(_json(value) if isinstance(value, str) else value, possible_answers=True)
    if calls is None:
        raise BarctlError(f"tool_call reward: ground_truth is not a call or a list of calls: {value!r}")
    return calls


def function_schemas(value: Any) -> dict[str, dict]:
    """Function name -> its parameters' JSON schema, from BFCL function docs or OpenAI tools."""
    items = _json(value) if isinstance(value, str) else value
    items = items if isinstance(items, list) else [items]
    schemas = {}
    for item in items:
        function = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BarctlError(f"tool_call reward: not a function schema: {item!r}")
        schemas[function["name"]] = function.get("parameters") or {}
    return schemas


def tool_call(prompts: list, completions: list, ground_truth: list, functions: list | None = None,
              tools: list | None = None, **kwargs: Any) -> list[float]:
    """1.0 for each completion whose tool calls match ``ground_truth``, else 0.0."""
    declared = functions if functions is not None else tools
    rewards = []
    for index, (completion, truth) in enumerate(zip(completions, ground_truth, strict=True)):
        expected = _ground_truth(truth)
        schemas = function_schemas(declared[index]) if declared is not None and declared[index] else {}
        predicted = parse_tool_calls(completion)
        matched = not expected if predicted is None else _multiset_match(predicted, expected, schemas)
        rewards.append(1.0 if matched else 0.0)
    return rewards
