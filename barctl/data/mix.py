"""Mixes: one training stage's rows, drawn from several datasets by count, fraction or weight."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np

from barctl.data.formats import CANONICAL
from barctl.data.stream_draw import StreamedDataset
from barctl.errors import BarctlError


def mix_plan(mix: Mapping[str, Any], sizes: Mapping[str, int | None]) -> dict[str, int]:
    """Rows drawn from each dataset, given every dataset's row count (None: unknown, a stream's).

    `count` takes that many rows, `fraction` that share of the dataset's rows (rounded),
    and `weight`s share what `size` leaves after them (largest remainder, so they sum
    exactly). Without weights, `size` must be absent or equal the total.
    """
    plan: dict[str, int] = {}
    weighted: list[tuple[str, float]] = []
    for source in mix["sources"]:
        name = source["dataset"]
        if name not in sizes:
            raise BarctlError(f"mix source {name!r}: no such dataset")
        if source.get("count") is not None:
            rows = int(source["count"])
        elif source.get("fraction") is not None:
            rows = round(source["fraction"] * _known(name, sizes[name]))
        else:
            rows = 0
            weighted.append((name, float(source["weight"])))
        plan[name] = plan.get(name, 0) + rows

    size, fixed = mix.get("size"), sum(plan.values())
    if weighted:
        if size is None:
            raise BarctlError("mix: a source has a weight, so the mix needs a size")
        if fixed > size:
            raise BarctlError(f"mix: counts and fractions take {fixed} rows, more than its size {size}")
        for (name, _), rows in zip(weighted, _shares(size - fixed, [w for _, w in weighted])):
            plan[name] += rows
    elif size is not None and size != fixed:
        raise BarctlError(
            f"mix: size is {size} but counts and fractions take {fixed} rows; "
            "give a source a weight to fill the rest, or drop size"
        )
    for name, rows in plan.items():
        if rows and sizes[name] == 0:
            raise BarctlError(f"mix source {name!r}: the dataset is empty but the mix takes {rows} rows from it")
    return plan


def _known(name: str, size: int | None) -> int:
    if size is None:
        raise BarctlError(
            f"mix source {name!r}: a fraction of a streamed dataset needs the split's size, and its metadata "
            "does not give it; take a `count` instead, or set `streaming: false` on the dataset")
    return size


def _shares(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights`: floors, then the largest remainders get one more."""
    exact = [total * w / sum(weights) for w in weights]
    shares = [int(x) for x in exact]
    # sorted() is stable, so ties go to the earlier source
    by_remainder = sorted(range(len(exact)), key=lambda i: shares[i] - exact[i])
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def build_mix(mix: Mapping[str, Any],
              datasets_by_name: Mapping[str, datasets.Dataset | StreamedDataset]) -> datasets.Dataset:
    """The mix's rows from datasets as `load_dataset_spec` (or `open_stream`) returns them, shuffled, with a
    `source` column.

    Each dataset's rows are drawn from its own generator seeded by (seed, dataset name), so
    changing one source leaves the others' rows alone. Rows are drawn without replacement
    while they last; a source asking for more than the dataset holds repeats it: whole
    passes in fresh orders, then a sample for the rest, so repeat counts differ by at most
    one. A streamed dataset's rows are the first of its seeded stream (barctl.data.stream_draw).
    Columns only some datasets have (extra `prompt` columns) are null in the others.
    """
    plan = mix_plan(mix, {name: ds.size if isinstance(ds, StreamedDataset) else len(ds)
                          for name, ds in datasets_by_name.items()})
    seed = mix.get("seed") or 0
    parts = []
    for name, rows in plan.items():
        if not rows:
            continue
        dataset = datasets_by_name[name]
        generator = _generator(seed, name)
        if isinstance(dataset, StreamedDataset):
            part = dataset.draw(rows, int(generator.integers(2**32)))
        else:
            part = dataset.select(_draw(len(dataset), rows, generator))
        if "source" in part.column_names:
            part = part.remove_columns("source")
        parts.append((name, part.add_column("source", [name] * rows)))
    if not parts:
        raise BarctlError("mix: takes no rows")
    return datasets.concatenate_datasets(_aligned(parts)).shuffle(seed=seed)


def concatenate_mixes(mixes: list[datasets.Dataset], seed: int) -> datasets.Dataset:
    """Drawn mixes (as `build_mix` returns them) as one dataset, shuffled; columns aligned as within a mix."""
    if not mixes:
        raise BarctlError("no mixes to concatenate")
    parts = [(f"mix {index}", mix) for index, mix in enumerate(mixes)]
    return datasets.concatenate_datasets(_aligned(parts)).shuffle(seed=seed)


def _draw(available: int, rows: int, generator: np.random.Generator) -> np.ndarray:
    passes = (rows + available - 1) // available
    return np.concatenate([generator.permutation(available) for _ in range(passes)])[:rows]


def _generator(seed: int, name: str) -> np.random.Generator:
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return np.random.default_rng([seed, name_key])


def _aligned(parts: list[tuple[str, datasets.Dataset]]) -> list[datasets.Dataset]:
    """The parts with the same columns, in the same order, of the same types."""
    columns = list(dict.fromkeys(c for _, part in parts for c in part.column_names))
    columns.append(columns.pop(columns.index("source")))
    for column in columns:
        lacking = [name for name, part in parts if column not in part.column_names]
        if lacking and column in CANONICAL:
            having = [name for name, part in parts if column in part.column_names]
            raise BarctlError(
                f"mix: datasets of different formats: {', '.join(map(repr, having))} have column "
                f"{column!r}, {', '.join(map(repr, lacking))} do not"
            )
        if lacking:
            feature = next(part.features[column] for _, part in parts if column in part.column_names)
            parts = [(name, _with_column(part, column, feature)) for name, part in parts]
        parts = _same_type(parts, column)
    return [part.select_columns(columns) for _, part in parts]


def _with_column(part: datasets.Dataset, column: str, feature: object) -> datasets.Dataset:
    if column in part.column_names:
        return part
    return part.add_column(column, [None] * len(part), feature=feature)


def _same_type(parts: list[tuple[str, datasets.Dataset]], column: str) -> list[tuple[str, datasets.Dataset]]:
    """Cast `column` to one type all parts accept (e.g. messages with and without extra keys)."""
    types = []
    for _, part in parts:
        if part.features[column] not in types:
            types.append(part.features[column])
    if len(types) == 1:
        return parts
    for target in types:
        try:
            return [
                (name, part if part.features[column] == target else part.cast_column(column, target))
                for name, part in parts
            ]
        except (TypeError, ValueError, NotImplementedError):
            continue
    found = "; ".join(f"{name!r} has {part.features[column]}" for name, part in parts)
    raise BarctlError(f"mix: column {column!r} has types that do not combine: {found}")
