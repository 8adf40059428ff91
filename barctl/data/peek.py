"""Read the column names and first records of a data file without reading all of it."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

SAMPLE = 5  # records read per file
_BLOCK = 1 << 16
_DECODER = json.JSONDecoder()


class PeekError(Exception):
    """A data file that cannot be read; the message says why, without the file name."""


def peek(path: Path, limit: int = SAMPLE) -> tuple[list[str], list[dict]]:
    """Column names and up to `limit` first records of a .json, .jsonl, .csv or .parquet file."""
    if path.stat().st_size == 0:
        raise PeekError("the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return _parquet(path, limit)
        with open(path, encoding="utf-8-sig", newline="") as f:
            if suffix == ".csv":
                return _csv(f, limit)
            records = _json(f, limit) if suffix == ".json" else _json_lines(f, limit)
    except UnicodeDecodeError as e:
        raise PeekError(f"the file is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not records:
        raise PeekError("the file holds no records")
    return list(dict.fromkeys(key for record in records for key in record)), records


def _json_lines(lines: Iterable[str], limit: int) -> list[dict]:
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PeekError(f"line {number} is not valid JSON: {e.msg}") from e
        if not isinstance(record, dict):
            raise PeekError(f"line {number} is not a JSON object")
        records.append(record)
        if len(records) == limit:
            break
    return records


def _json(f: TextIO, limit: int) -> list[dict]:
    """A JSON array of objects (or of strings, read as `text`), or JSON Lines, as `datasets` reads them."""
    start = f.read(_BLOCK)
    if not start.lstrip().startswith("["):
        return _json_lines(itertools.chain(io.StringIO(start + f.readline()), f), limit)
    return _json_array(f, start, limit)


def _json_array(f: TextIO, buf: str, limit: int) -> list[dict]:
    def next_char(pos: int) -> int:
        """Position of the next non-blank character, reading more of the file as needed."""
        nonlocal buf
        while True:
            while pos < len(buf) and buf[pos].isspace():
                pos += 1
            if pos < len(buf):
                return pos
            chunk = f.read(_BLOCK)
            if not chunk:
                raise PeekError("the JSON array is not closed")
            buf += chunk

    records: list[dict] = []
    pos = next_char(0) + 1
    while len(records) < limit:
        pos = next_char(pos)
        if buf[pos] == "]":
            break
        number = len(records) + 1
        if records:
            if buf[pos] != ",":
                raise PeekError(f"record {number} is not valid JSON: expected ','")
            pos = next_char(pos + 1)
        while True:
            try:
                record, pos = _DECODER.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as e:
                chunk = f.read(_BLOCK)  # the record may continue past what was read
                if not chunk:
                    raise PeekError(f"record {number} is not valid JSON: {e.msg}") from e
                buf += chunk
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict):
            raise PeekError(f"record {number} is not a JSON object")
        records.append(record)
    return records


def _csv(f: TextIO, limit: int) -> tuple[list[str], list[dict]]:
    try:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        records = list(itertools.islice(reader, limit))
    except csv.Error as e:
        raise PeekError(f"the file is not valid CSV: {e}") from e
    if not columns:
        raise PeekError("the file is empty")
    if not records:
        raise PeekError("the file has a header but no rows")
    return columns, records


def _parquet(path: Path, limit: int) -> tuple[list[str], list[dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:
            raise PeekError("the file holds no rows")
        batch = next(parquet.iter_batches(batch_size=limit))
    except (pa.ArrowException, OSError) as e:
        raise PeekError(f"the file is not valid Parquet: {e}") from e
    return list(parquet.schema_arrow.names), batch.to_pylist()
