"""Load a dataset spec into a `datasets.Dataset` with the format's canonical columns."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import datasets

from barctl.data.files import builder_for, resolve_files, where
from barctl.data.formats import column_problems, column_renames, record_problems
from barctl.data.peek import SAMPLE
from barctl.errors import BarctlError


def load_dataset_spec(spec: dict, cache_dir: Path | None = None) -> datasets.Dataset:
    """The dataset a spec names, keeping (and renaming to) only its format's columns.

    Local files use the json/csv/parquet builders; hub data uses `spec["hub"]` with its
    revision, subset and split. `cache_dir` overrides the `datasets` cache.
    """
    try:
        dataset = datasets.load_dataset(**load_args(spec), cache_dir=str(cache_dir) if cache_dir else None)
    # Builders and the hub client fail in many unrelated types (ArrowInvalid, DatasetGenerationError,
    # DatasetNotFoundError, ConnectionError, ...); all of them mean the data cannot be read.
    except Exception as e:
        raise BarctlError(f"{where(spec)}: cannot load: {e}") from e
    return canonical(spec, dataset)


def load_args(spec: dict) -> dict[str, Any]:
    """The `datasets.load_dataset` arguments that read a spec's split (barctl.data.stream_draw streams them)."""
    if spec.get("hub"):
        return {
            "path": spec["hub"],
            "name": spec.get("subset"),
            "revision": spec.get("revision"),
            "split": spec.get("split") or "train",
        }
    files = resolve_files(spec)
    builder = builder_for(spec, files)
    args: dict[str, Any] = {"path": builder, "data_files": [str(f) for f in files], "split": "train"}
    if builder == "csv":
        # CSV cells are text, as inspect.py reads them; pandas would make "4" the number 4.
        args["features"] = datasets.Features({c: datasets.Value("string") for c in _csv_header(files[0])})
    return args


def canonical(spec: dict, dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with the spec's column mapping applied and only the format's columns kept."""
    fmt, mapping = spec["format"], spec.get("columns") or {}
    problems = column_problems(fmt, mapping, dataset.column_names)
    if problems:
        raise BarctlError("\n".join(f"{where(spec)}: {p}" for p in problems))
    renames = column_renames(fmt, mapping, dataset.column_names)
    problems = record_problems(fmt, renames, list(dataset.select(range(min(SAMPLE, len(dataset))))))
    if problems:
        raise BarctlError("\n".join(f"{where(spec)}: {p}" for p in problems))
    dataset = dataset.select_columns(list(renames))
    return dataset.rename_columns({s: t for s, t in renames.items() if s != t})


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f), [])
