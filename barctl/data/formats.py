"""Dataset formats: their canonical columns, the column mapping, and the shape of values."""

from __future__ import annotations

from typing import Any

# Format -> the canonical columns every row must have.
FORMATS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt",),
}
# Formats that keep their other columns too: reward functions read them (answer, tests, ...).
KEEPS_EXTRA = {"prompt"}
# Every name that is canonical in some format.
CANONICAL = frozenset(c for columns in FORMATS.values() for c in columns)


def column_problems(fmt: str, mapping: dict[str, str], present: list[str]) -> list[str]:
    """What stops `present` columns from giving format `fmt` after `mapping` (canonical -> source)."""
    wanted = FORMATS[fmt]
    problems = []
    if fmt not in KEEPS_EXTRA:
        for target in mapping:
            if target not in wanted:
                problems.append(
                    f"columns maps {target!r}, which format {fmt!r} does not use (it uses: {', '.join(wanted)})"
                )
    listing = ", ".join(present) or "(none)"
    for target in dict.fromkeys([*wanted, *mapping]):
        source = mapping.get(target, target)
        if source in present:
            continue
        if target in mapping:
            problems.append(f"column {source!r} (mapped to {target!r}) is missing; columns are: {listing}")
        elif target in wanted:
            problems.append(
                f"column {target!r} is missing; columns are: {listing}. Map one with columns: {{{target}: ...}}"
            )
    return problems


def column_renames(fmt: str, mapping: dict[str, str], present: list[str]) -> dict[str, str]:
    """Source column -> output column, for every column the format keeps (canonical first)."""
    renames = {mapping.get(target, target): target for target in FORMATS[fmt]}
    if fmt in KEEPS_EXTRA:
        renames.update({source: target for target, source in mapping.items()})
        taken = set(renames) | set(renames.values())
        renames.update({c: c for c in present if c not in taken})
    return renames


def record_problems(fmt: str, renames: dict[str, str], records: list[dict]) -> list[str]:
    """The first wrongly shaped value of each canonical column in `records` (source-named)."""
    problems = []
    for source, target in renames.items():
        if target not in FORMATS[fmt]:
            continue
        label = repr(source) if source == target else f"{source!r} (mapped to {target!r})"
        for number, record in enumerate(records, 1):
            problem = value_problem(target, record.get(source))
            if problem:
                problems.append(f"record {number}: column {label} {problem}")
                break
    return problems


def value_problem(column: str, value: Any) -> str | None:
    """What is wrong with one value of canonical column `column` (e.g. "must be a string, got null"), or None."""
    if column == "messages":
        return _messages_problem(value)
    if column == "text":
        return None if isinstance(value, str) else f"must be a string, got {_kind(value)}"
    if column in CANONICAL:
        if isinstance(value, str):
            return None
        if isinstance(value, list):
            return _messages_problem(value)
        return f"must be a string or a list of {{role, content}} messages, got {_kind(value)}"
    return None


def _messages_problem(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"must be a list of {{role, content}} messages, got {_kind(value)}"
    if not value:
        return "is an empty list of messages"
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            return f"item {i} must be a {{role, content}} message, got {_kind(message)}"
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return f"an object with keys {', '.join(map(str, value)) or '(none)'}"
    if isinstance(value, bool):
        return "a boolean"
    names = {str: "a string", list: "a list", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)
