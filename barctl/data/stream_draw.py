"""A dataset read as a stream (`datasets.load_dataset(..., streaming=True)`) and a mix's draw from it.

Only the rows a mix takes are read and kept: the split is never downloaded whole. The draw is
seeded: the stream's shard order and a buffer of `shuffle_buffer` rows are shuffled
(`IterableDataset.shuffle`), and the first rows are taken; past the end of the split the
stream starts again in a fresh order. The rows come back as a `datasets.Dataset` with the
format's canonical columns, as `barctl.data.load.load_dataset_spec` gives them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from barctl.data.files import where
from barctl.data.load import canonical, load_args
from barctl.errors import BarctlError


@dataclass(frozen=True)
class StreamedDataset:
    spec: dict[str, Any]
    stream: datasets.IterableDataset
    size: int | None  # the split's rows as its metadata gives them; None when it does not

    def draw(self, rows: int, seed: int) -> datasets.Dataset:
        """`rows` rows of the stream, shuffled with `seed`; repeats the split when it holds fewer."""
        taken: list[dict[str, Any]] = []
        for epoch in itertools.count():
            shuffled = self.stream.shuffle(seed=_pass_seed(seed, epoch), buffer_size=self.spec["shuffle_buffer"])
            before = len(taken)
            try:
                taken.extend(shuffled.take(rows - before))
            except Exception as e:  # the stream fails as loading does (network, parsing): see load_dataset_spec
                raise BarctlError(f"{where(self.spec)}: cannot stream: {e}") from e
            if len(taken) == rows:
                break
            if len(taken) == before:
                raise BarctlError(f"{where(self.spec)}: the stream is empty but the mix takes {rows} rows from it")
        return canonical(self.spec, datasets.Dataset.from_list(taken, features=self.stream.features))


def open_stream(spec: dict[str, Any]) -> StreamedDataset:
    """The spec's split as a stream, with its size when the split's metadata gives it."""
    args = load_args(spec)
    try:
        stream = datasets.load_dataset(**args, streaming=True)
    except Exception as e:  # as in load_dataset_spec: every failure means the data cannot be read
        raise BarctlError(f"{where(spec)}: cannot stream: {e}") from e
    return StreamedDataset(spec, stream, split_size(args))


def split_size(args: dict[str, Any]) -> int | None:
    """The rows of the split `args` (for `datasets.load_dataset`) name, from the builder's info;
    None when the info does not say (local files, a hub dataset without split metadata)."""
    split = args["split"]
    try:
        info = datasets.load_dataset_builder(**{k: v for k, v in args.items() if k != "split"}).info
    except Exception:  # no metadata to read: the size is unknown, which only a `fraction` needs
        return None
    found = (info.splits or {}).get(split)
    return (found.num_examples or None) if found is not None else None


def _pass_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
