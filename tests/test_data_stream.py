"""Streamed datasets: when a mix streams, the seeded draw, repeats, canonical columns and the stage's key.

The hub is offline here; `datasets` streams local JSONL files the same way (`streaming: true`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from barctl.data.load import load_dataset_spec
from barctl.data.mix import build_mix
from barctl.data.stream_draw import StreamedDataset, open_stream
from barctl.data.streaming import stream_keys, streams
from barctl.errors import BarctlError
from barctl.manifest.schema import defaults
from tests.projects import make_project, plan_json, tiny_manifest


def spec(path: Path, **extra) -> dict:
    return {"name": "t", "path": str(path), **defaults("$defs", "dataset"), "format": "text",
            "streaming": True, **extra}


def texts(tmp_path: Path, rows: int, column: str = "text") -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({column: f"row-{i}", "extra": i}) + "\n" for i in range(rows)))
    return path


def take(source, rows: int, seed: int = 0, how: str = "count") -> list[str]:
    mix = {"sources": [{"dataset": "t", how: rows}], "seed": seed}
    return build_mix(mix, {"t": source})["text"]


def test_the_schema_defaults_stream_hub_counts_and_partial_fractions_only():
    hub = {"name": "t", "hub": "org/t", **defaults("$defs", "dataset")}
    local = {"name": "t", "path": "t.jsonl", **defaults("$defs", "dataset")}
    by = lambda *sources: {"sources": [{"dataset": "t", **s} for s in sources]}  # noqa: E731
    assert hub["streaming"] == "auto"
    assert streams(hub, by({"count": 5})) and streams(hub, by({"fraction": 0.5}))
    assert not streams(hub, by({"fraction": 1.0}))  # all of it: read whole, shuffled by permutation
    assert not streams(hub, by({"weight": 1.0}))
    assert not streams(hub, by({"count": 5}, {"weight": 1.0}))  # a weight draws from the whole length
    assert not streams(local, by({"count": 5}))
    assert streams({**local, "streaming": True}, by({"weight": 1.0}))
    assert not streams({**hub, "streaming": False}, by({"count": 5}))


def test_a_streamed_draw_is_the_same_rows_for_a_seed_and_other_rows_for_another(tmp_path):
    path = texts(tmp_path, 200)
    first, again = take(open_stream(spec(path)), 20), take(open_stream(spec(path)), 20)
    assert first == again
    assert len(set(first)) == 20
    assert take(open_stream(spec(path)), 20, seed=1) != first


def test_the_buffer_decides_how_far_a_draw_reaches(tmp_path):
    path = texts(tmp_path, 200)
    narrow = take(open_stream(spec(path, shuffle_buffer=10)), 10)
    assert max(int(t.split("-")[1]) for t in narrow) < 20  # the first rows of the file, shuffled
    assert take(open_stream(spec(path, shuffle_buffer=200)), 10) != narrow


def test_more_rows_than_the_split_holds_repeat_it_evenly(tmp_path):
    counts = Counter(take(open_stream(spec(texts(tmp_path, 5))), 12))
    assert sum(counts.values()) == 12 and len(counts) == 5
    assert set(counts.values()) <= {2, 3}


def test_streamed_rows_have_the_canonical_columns_the_whole_load_gives(tmp_path):
    path = texts(tmp_path, 4, column="body")
    mapped = spec(path, columns={"text": "body"})
    drawn = build_mix({"sources": [{"dataset": "t", "count": 4}]}, {"t": open_stream(mapped)})
    whole = load_dataset_spec({**mapped, "streaming": False}, cache_dir=tmp_path / "hf-cache")
    assert drawn.column_names == ["text", "source"]
    assert sorted(drawn["text"]) == sorted(whole["text"])


def test_a_fraction_needs_the_splits_size_from_its_metadata(tmp_path):
    path = texts(tmp_path, 10)
    stream = open_stream(spec(path))
    assert stream.size is None  # local files carry no split metadata
    with pytest.raises(BarctlError, match="fraction of a streamed dataset needs the split's size.*`count`"):
        take(stream, 0.5, how="fraction")
    assert len(take(StreamedDataset(stream.spec, stream.stream, size=10), 0.5, how="fraction")) == 5


def test_an_empty_stream_is_a_located_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("")
    with pytest.raises(BarctlError, match=r"dataset 't' .*empty"):
        take(open_stream(spec(path)), 3)


def test_stream_keys_name_only_the_streamed_datasets():
    specs = {"a": {"name": "a", "hub": "org/a", "streaming": "auto", "shuffle_buffer": 7},
             "b": {"name": "b", "hub": "org/b", "streaming": "auto", "shuffle_buffer": 7}}
    mix = {"sources": [{"dataset": "a", "count": 3}, {"dataset": "b", "weight": 1.0}], "size": 5}
    assert stream_keys(specs, [mix]) == {"a": {"streaming": "auto", "shuffle_buffer": 7}}


def test_streaming_is_in_the_key_of_the_stages_it_changes(tmp_path, tokenizer_dir):
    def key(name: str, source: dict, **chat) -> str:
        stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", **source}], "size": 2}}
        datasets = {"chat": {"hub": "org/chat", "revision": "a" * 40, "format": "messages", **chat}}
        manifest = make_project(tmp_path / name, tokenizer_dir,
                                tiny_manifest({"math": {"stages": [stage]}}, datasets=datasets))
        return plan_json(manifest)["experts.math.sft"]["key"]

    count = {"count": 2}
    assert key("auto", count) != key("off", count, streaming=False)
    assert key("auto", count) != key("buffer", count, shuffle_buffer=5)
    weight = {"weight": 1.0}
    assert key("w-auto", weight) == key("w-off", weight, streaming=False)  # read whole either way
