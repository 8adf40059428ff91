"""The manifest's JSON schema: validation with located, readable messages, and its `default` keywords.

The schema is the one place where defaults are written: the recipe, and every module that fills in
a default of the manifest, read them from here.
"""

from __future__ import annotations

import copy
import difflib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from barctl.errors import Issue
from barctl.manifest.yamlload import LoadedYaml

# Shipped inside the package; in a checkout it links to schemas/manifest.schema.json (for editors).
SCHEMA_PATH = Path(__file__).resolve().parent / "manifest.schema.json"

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")  # the schema's `report_to` values
GATE_MODELS = "anchor, merged, own_expert or experts.<name>"
GATE_VALUES = {"model": GATE_MODELS, "over": GATE_MODELS, "at_least": f"a number or a model ({GATE_MODELS})",
                "tolerance": "a number (0 or more) or 'ci95'"}


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def defaults(*pointer: str) -> dict[str, Any]:
    """The `default` of every property of the schema object at `pointer`, following `$ref`s, e.g.
    defaults("properties", "output") -> {"architecture": "auto", "dtype": "auto", ...}."""
    node = _at(pointer)
    return {name: copy.deepcopy(spec["default"]) for name, spec in node.get("properties", {}).items()
            if "default" in spec}


def default(*pointer: str) -> Any:
    """The `default` of the schema property at `pointer`, e.g. default("properties", "seed") -> 0."""
    return copy.deepcopy(_at(pointer)["default"])


def stage_defaults(kind: str) -> dict[str, Any]:
    """The defaults a stage of `kind` gets (its `trainable` groups), from the stage's `if kind: ... then` branches."""
    for branch in load_schema()["$defs"]["stage"]["allOf"]:
        if branch["if"]["properties"]["kind"]["const"] == kind:
            return {name: copy.deepcopy(spec["default"]) for name, spec in branch["then"]["properties"].items()}
    raise KeyError(kind)


def _at(pointer: tuple[str, ...]) -> dict[str, Any]:
    node: dict[str, Any] = load_schema()
    for key in pointer:
        node = node[key]
        while "$ref" in node and "default" not in node:
            node = _at(tuple(node["$ref"].removeprefix("#/").split("/")))
    return node


def schema_issues(loaded: LoadedYaml) -> list[Issue]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema())
    issues = []
    for error in validator.iter_errors(loaded.data):
        issues.extend(_issues_from_schema_error(loaded, error))
    return issues


def _issues_from_schema_error(loaded: LoadedYaml, error: Any) -> list[Issue]:
    path = tuple(error.absolute_path)
    validator = error.validator
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extras = [k for k in error.instance if k not in error.schema.get("properties", {})]
        return [
            loaded.issue(path + (key,), f"unknown field '{key}'{did_you_mean(key, allowed)}", at_key=True)
            for key in extras
        ]
    if validator == "required":
        missing = error.message.split("'")[1]
        return [loaded.issue(path, f"missing required field '{missing}'")]
    if validator == "enum":
        options = ", ".join(str(o) for o in error.validator_value)
        hint = did_you_mean(str(error.instance), [str(o) for o in error.validator_value])
        return [loaded.issue(path, f"{error.instance!r} is not one of: {options}{hint}")]
    if validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return [loaded.issue(path, f"expected {_article(expected)}, got {_describe(error.instance)}")]
    if "propertyNames" in error.schema_path:
        return [loaded.issue(path + (error.instance,), _name_message(path, error.instance), at_key=True)]
    if validator == "oneOf" and path[-1:] == ("top_k",):
        return [loaded.issue(path, f"must be a positive integer or 'all', got {error.instance!r}")]
    if validator == "oneOf" and path[-1:] == ("report_to",):
        hint = did_you_mean(error.instance, list(REPORT_TO)) if isinstance(error.instance, str) else ""
        return [loaded.issue(path, f"must be one of {', '.join(REPORT_TO)}, or a list of "
                                   f"{', '.join(REPORT_TO[1:])}; got {error.instance!r}{hint}")]
    if validator in ("oneOf", "pattern") and path[:1] == ("gates",) and path[-1] in GATE_VALUES:
        return [loaded.issue(path, f"must be {GATE_VALUES[path[-1]]}, got {error.instance!r}")]
    if validator == "const":
        return [loaded.issue(path, f"must be {error.validator_value!r}, got {error.instance!r}")]
    if validator == "minProperties" and path == ("experts",):
        return [loaded.issue(path, "declare at least one expert")]
    return [loaded.issue(path, error.message)]


def _name_message(path: tuple, name: str) -> str:
    if path == ("experts",):
        return (f"name {name!r} is not allowed: use lower-case letters, digits, '_' or '-', starting with "
                "a letter (names become node ids such as experts.<name>.sft)")
    return f"name {name!r} is not allowed: use letters, digits, '_', '-' or '.'"


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _article(type_name: str) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "nothing"}
    return names.get(type_name, type_name)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"
