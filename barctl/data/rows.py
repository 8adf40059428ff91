"""Every row of a local data file checked at plan, once per file content: format, columns,
message roles, UTF-8. A bad row 300 is reported with its file and line before anything
trains, not an hour later as a library's traceback.

Files that passed are remembered, with their row count, by content digest (and the format
and columns they were checked for) in `.barctl/cache/rows.json`, so a plan re-reads only
changed data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from barctl.data.fingerprint import FingerprintCache, file_digest
from barctl.data.formats import FORMATS, value_problem

SHOWN = 3  # problems listed per file; the rest are counted
_VERSION = 2


class RowsChecked:
    """The (file digest, format, columns) combinations whose every row passed, with their row counts."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "cache" / "rows.json"
        self.digests = FingerprintCache(state_dir / "cache" / "digests.json")
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            self._passed = dict(document["passed"]) if document.get("version") == _VERSION else {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self._passed = {}

    def problems(self, file: Path, fmt: str, mapping: dict[str, str], required: tuple[str, ...]) -> list[str]:
        """The file's row problems; none (without reading it) when this content passed before."""
        key = self._key(file, fmt, mapping, required)
        if key in self._passed:
            return []
        problems, rows = _scan(file, fmt, mapping, required)
        if not problems:
            self._passed[key] = rows
        return problems

    def rows(self, file: Path, fmt: str, mapping: dict[str, str], required: tuple[str, ...]) -> int | None:
        """The file's row count, when its content passed the check (else None)."""
        return self._passed.get(self._key(file, fmt, mapping, required))

    def _key(self, file: Path, fmt: str, mapping: dict[str, str], required: tuple[str, ...]) -> str:
        return hashlib.sha256(json.dumps([_VERSION, file_digest(file, self.digests), fmt, mapping,
                                          sorted(required)], sort_keys=True).encode()).hexdigest()

    def save(self) -> None:
        """Remember what passed; a read-only checkout simply checks again next time."""
        self.digests.save()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"version": _VERSION, "passed": dict(sorted(self._passed.items()))}),
                                 encoding="utf-8")
        except OSError:
            pass


def file_row_problems(file: Path, fmt: str, mapping: dict[str, str], required: tuple[str, ...]) -> list[str]:
    """'line N: ...' (or 'record N', 'row N') for the first rows at fault, then how many more."""
    return _scan(file, fmt, mapping, required)[0]


def _scan(file: Path, fmt: str, mapping: dict[str, str], required: tuple[str, ...]) -> tuple[list[str], int]:
    """The file's row problems and its row count."""
    shown: list[str] = []
    faulty = rows = 0
    try:
        for place, record in _rows(file):
            rows += 1
            problem = row_problem(record, fmt, mapping, required)
            if problem:
                faulty += 1
                if len(shown) < SHOWN:
                    shown.append(f"{place}: {problem}")
    except _Unreadable as error:
        shown.append(str(error))
    if faulty > SHOWN:
        shown.append(f"{faulty - SHOWN} more rows have problems")
    return shown, rows


def row_problem(record: Any, fmt: str, mapping: dict[str, str], required: tuple[str, ...]) -> str | None:
    """What is wrong with one row of a `fmt` dataset read through `mapping` (canonical -> source column)."""
    if not isinstance(record, dict):
        return "is not a JSON object"
    for target in FORMATS[fmt]:
        source = mapping.get(target, target)
        label = repr(source) if source == target else f"{source!r} (mapped to {target!r})"
        if source not in record:
            return f"column {label} is missing"
        problem = value_problem(target, record[source])
        if problem:
            return f"column {label} {problem}"
    missing = [mapping.get(c, c) for c in required if record.get(mapping.get(c, c)) is None]
    return f"column {missing[0]!r} is missing" if missing else None


class _Unreadable(Exception):
    """A file that cannot be read on from some point; the message says where."""


def _rows(file: Path) -> Iterator[tuple[str, Any]]:
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(file)
    elif suffix == ".csv":
        yield from _csv_rows(file)
    elif suffix == ".json" and _starts_array(file):
        yield from _json_array_rows(file)
    else:
        yield from _json_lines(file)


def _json_lines(file: Path) -> Iterator[tuple[str, Any]]:
    with open(file, "rb") as f:
        for number, raw in enumerate(f, 1):
            line = _decode(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw, f"line {number}")
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise _Unreadable(f"line {number} is not valid JSON: {error.msg}") from None


def _json_array_rows(file: Path) -> Iterator[tuple[str, Any]]:
    try:
        records = json.loads(_decode(file.read_bytes().removeprefix(b"\xef\xbb\xbf"), "the file"))
    except json.JSONDecodeError as error:
        raise _Unreadable(f"line {error.lineno} is not valid JSON: {error.msg}") from None
    for number, record in enumerate(records, 1):
        yield f"record {number}", {"text": record} if isinstance(record, str) else record


def _csv_rows(file: Path) -> Iterator[tuple[str, Any]]:
    text = _decode(file.read_bytes().removeprefix(b"\xef\xbb\xbf"), "the file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for record in reader:
            yield f"line {reader.line_num}", {k: v for k, v in record.items() if k is not None}
    except csv.Error as error:
        raise _Unreadable(f"line {reader.line_num} is not valid CSV: {error}") from None


def _parquet_rows(file: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                number += 1
                yield f"row {number}", record
    except (pa.ArrowException, OSError) as error:
        raise _Unreadable(f"row {number + 1} cannot be read: {error}") from None


def _decode(raw: bytes, place: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Unreadable(f"{place} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def _starts_array(file: Path) -> bool:
    with open(file, "rb") as f:
        return f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
