"""Loading dataset specs into `datasets.Dataset` with canonical columns."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from barctl.data.load import load_dataset_spec
from barctl.data.spec_check import check_dataset
from barctl.errors import BarctlError

CHAT = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


@pytest.fixture
def load(tmp_path):
    return lambda spec: load_dataset_spec(spec, cache_dir=tmp_path / "hf-cache")


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_messages_keep_only_canonical_columns(tmp_path, load):
    data = jsonl(tmp_path / "d.jsonl", [{"messages": CHAT, "id": 1}, {"messages": CHAT, "id": 2}])
    dataset = load({"name": "chat", "path": str(data), "format": "messages"})
    assert dataset.column_names == ["messages"]
    assert dataset[0]["messages"] == CHAT


def test_mapping_renames_and_drops_shadowed_columns(tmp_path, load):
    data = jsonl(tmp_path / "d.jsonl", [{"body": "real", "text": "stale", "n": 1}])
    dataset = load({"name": "t", "path": str(data), "format": "text", "columns": {"text": "body"}})
    assert dataset.to_list() == [{"text": "real"}]


def test_prompt_keeps_extra_columns(tmp_path, load):
    data = jsonl(tmp_path / "d.jsonl", [{"question": "2+2?", "answer": "4", "level": 1}])
    dataset = load({"name": "m", "path": str(data), "format": "prompt", "columns": {"prompt": "question"}})
    assert dataset.to_list() == [{"prompt": "2+2?", "answer": "4", "level": 1}]


def test_csv_parquet_and_directories(tmp_path, load):
    (tmp_path / "d.csv").write_text("prompt,completion,x\n2+2?,4,a\n3+3?,6,b\n")
    from_csv = load({"name": "c", "path": str(tmp_path / "d.csv"), "format": "prompt_completion"})
    assert from_csv.to_list() == [{"prompt": "2+2?", "completion": "4"}, {"prompt": "3+3?", "completion": "6"}]
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        pq.write_table(pa.Table.from_pylist([{"text": f"row {i}"}]), shards / f"{i}.parquet")
    from_parquet = load({"name": "p", "path": str(shards), "format": "text"})
    assert from_parquet["text"] == ["row 0", "row 1"]


def test_missing_column_message_matches_inspect(tmp_path, load, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = jsonl(tmp_path / "math.jsonl", [{"prompt": "q", "answer": "a"}])
    spec = {"name": "math_sft", "path": str(data), "format": "messages"}
    with pytest.raises(BarctlError) as error:
        load(spec)
    assert str(error.value) == check_dataset(spec)[0]


def test_wrong_shape_is_an_error(tmp_path, load):
    data = jsonl(tmp_path / "d.jsonl", [{"messages": "hello"}])
    with pytest.raises(BarctlError, match="record 1: column 'messages' must be a list"):
        load({"name": "chat", "path": str(data), "format": "messages"})


def test_unreadable_file_is_an_error(tmp_path, load):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{broken\n')
    with pytest.raises(BarctlError, match=r"dataset 'bad' \(.*d.jsonl\): cannot load"):
        load({"name": "bad", "path": str(tmp_path / "d.jsonl"), "format": "text"})


def test_hub_dataset_offline_is_an_error(load):
    with pytest.raises(BarctlError, match=r"dataset 'h' \(hub barctl-test/no-such-dataset\): cannot load"):
        load({"name": "h", "hub": "barctl-test/no-such-dataset", "revision": "main", "format": "text"})


def test_csv_cells_stay_text(tmp_path, load):
    (tmp_path / "d.csv").write_text("prompt,answer\n2+2?,4\n1+1?,\n")
    dataset = load({"name": "c", "path": str(tmp_path / "d.csv"), "format": "prompt"})
    assert dataset.to_list() == [{"prompt": "2+2?", "answer": "4"}, {"prompt": "1+1?", "answer": None}]
