"""Which datasets a stage's mix reads as a stream, and what of that enters the stage's key.

Imports neither torch nor datasets: the graph asks it while planning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def streams(spec: Mapping[str, Any], mix: Mapping[str, Any]) -> bool:
    """Whether `mix` reads the dataset `spec` as a stream.

    `streaming: true` always; `auto` for a hub dataset of which every source of the mix that
    names it takes a `count` or a `fraction` below 1 (a `weight` draws from the whole dataset's
    length; `fraction: 1` reads all of it anyway, and a whole load shuffles it better).
    """
    mode = spec["streaming"]
    if mode is True or mode is False:
        return mode
    sources = [s for s in mix["sources"] if s["dataset"] == spec["name"]]
    return bool(spec.get("hub")) and bool(sources) and all(
        s.get("count") is not None or (s.get("fraction") is not None and s["fraction"] < 1) for s in sources)


def stream_keys(specs: Mapping[str, Mapping[str, Any]], mixes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """For each dataset some mix streams: what changes its streamed rows (the mode and the buffer).

    The mixes themselves are in the stage's config; with these, the key tells which draw a stage made.
    Datasets read whole add nothing, so their stages keep the keys they had before streaming existed.
    """
    found = {}
    for mix in mixes:
        for name in sorted({s["dataset"] for s in mix["sources"]}):
            if streams(specs[name], mix):
                found[name] = {"streaming": specs[name]["streaming"], "shuffle_buffer": specs[name]["shuffle_buffer"]}
    return found
