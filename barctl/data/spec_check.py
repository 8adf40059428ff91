"""Plan-time checks of a dataset: its files, columns and first records, without loading it."""

from __future__ import annotations

from pathlib import Path

from barctl.data.files import file_type_problem, resolve_files, where
from barctl.data.formats import column_problems, column_renames, record_problems
from barctl.data.peek import PeekError, peek
from barctl.errors import BarctlError

_FILES_SHOWN = 3  # a sharded dataset with one mistake would repeat it for every shard


def check_dataset(spec: dict, required: tuple[str, ...] = ()) -> list[str]:
    """Problems with a dataset, one human-readable line each; empty when it looks fine.

    `required`: extra columns a reader needs (e.g. `answer` for a math evaluation), after
    the column mapping. Hub datasets are not checked: that needs the network.
    """
    if spec.get("hub"):
        return []
    try:
        files = resolve_files(spec)
    except BarctlError as e:
        return [str(e)]
    problem = file_type_problem(spec, files)
    if problem:
        return [problem]
    faulty = [problems for problems in (_check_file(spec, f, required) for f in files) if problems]
    shown = [line for problems in faulty[:_FILES_SHOWN] for line in problems]
    if len(faulty) > _FILES_SHOWN:
        shown.append(f"{where(spec)}: {len(faulty) - _FILES_SHOWN} more files have problems")
    return shown


def _check_file(spec: dict, file: Path, required: tuple[str, ...]) -> list[str]:
    prefix = where(spec, file)
    try:
        columns, records = peek(file)
    except PeekError as e:
        return [f"{prefix}: {e}"]
    fmt, mapping = spec["format"], spec.get("columns") or {}
    problems = column_problems(fmt, mapping, columns) or record_problems(
        fmt, column_renames(fmt, mapping, columns), records
    )
    listing = ", ".join(columns) or "(none)"
    problems += [f"column {mapping.get(c, c)!r} is missing; columns are: {listing}"
                 for c in required if mapping.get(c, c) not in columns]
    return [f"{prefix}: {p}" for p in problems]
