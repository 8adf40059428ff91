"""Plan-time dataset checks on tiny files of every supported type."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from barctl.data.spec_check import check_dataset

CHAT = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def write(path: Path, rows: list[dict]) -> Path:
    """Write rows as the file type the extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def spec(path: Path | str, fmt: str, columns: dict | None = None, name: str = "math_sft") -> dict:
    result = {"name": name, "path": str(path), "format": fmt}
    if columns:
        result["columns"] = columns
    return result


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages show paths relative to the working directory


ALL_TYPES = [".jsonl", ".json", ".csv", ".parquet"]
STRUCTURED = [".jsonl", ".json", ".parquet"]  # CSV cannot hold lists of messages


@pytest.mark.parametrize("ext", ALL_TYPES)
def test_good_prompt_completion_file(tmp_path, ext):
    data = write(tmp_path / f"d{ext}", [{"prompt": "2+2?", "completion": "4", "id": "1"}] * 3)
    assert check_dataset(spec(data, "prompt_completion")) == []


@pytest.mark.parametrize("ext", STRUCTURED)
def test_good_messages_and_preference_files(tmp_path, ext):
    assert check_dataset(spec(write(tmp_path / f"m{ext}", [{"messages": CHAT}]), "messages")) == []
    rows = [{"prompt": CHAT[:1], "chosen": CHAT[1:], "rejected": [{"role": "assistant", "content": "5"}]}]
    assert check_dataset(spec(write(tmp_path / f"p{ext}", rows), "preference")) == []


@pytest.mark.parametrize("ext", ALL_TYPES)
def test_missing_column_names_dataset_file_and_columns(tmp_path, ext):
    write(tmp_path / "data" / f"math{ext}", [{"prompt": "2+2?", "answer": "4"}])
    assert check_dataset(spec(tmp_path / "data" / f"math{ext}", "messages")) == [
        f"dataset 'math_sft' (data/math{ext}): column 'messages' is missing; columns are: prompt, answer. "
        "Map one with columns: {messages: ...}"
    ]


@pytest.mark.parametrize("ext", ALL_TYPES)
def test_column_mapping(tmp_path, ext):
    data = write(tmp_path / f"d{ext}", [{"body": "some text"}])
    assert check_dataset(spec(data, "text", {"text": "body"})) == []
    assert check_dataset(spec(data, "text", {"text": "content"})) == [
        f"dataset 'math_sft' (d{ext}): column 'content' (mapped to 'text') is missing; columns are: body"
    ]


def test_mapping_a_column_the_format_does_not_use(tmp_path):
    data = write(tmp_path / "d.jsonl", [{"text": "x", "body": "y"}])
    [problem] = check_dataset(spec(data, "text", {"answer": "body"}))
    assert "columns maps 'answer', which format 'text' does not use (it uses: text)" in problem


def test_prompt_format_may_map_extra_columns(tmp_path):
    data = write(tmp_path / "d.jsonl", [{"question": "2+2?", "solution": "4"}])
    assert check_dataset(spec(data, "prompt", {"prompt": "question", "answer": "solution"})) == []
    [problem] = check_dataset(spec(data, "prompt", {"prompt": "question", "answer": "ground_truth"}))
    assert "column 'ground_truth' (mapped to 'answer') is missing" in problem


def test_missing_file(tmp_path):
    assert check_dataset(spec(tmp_path / "data" / "nope.jsonl", "text")) == [
        "dataset 'math_sft' (data/nope.jsonl): no such file or directory"
    ]


def test_glob_matching_nothing(tmp_path):
    [problem] = check_dataset(spec(tmp_path / "*.parquet", "text"))
    assert problem == "dataset 'math_sft' (*.parquet): the pattern matches no files"


def test_unsupported_extension(tmp_path):
    (tmp_path / "d.txt").write_text("hello\n")
    [problem] = check_dataset(spec(tmp_path / "d.txt", "text"))
    assert problem.startswith("dataset 'math_sft' (d.txt): unsupported file type '.txt'")


def test_mixed_file_types(tmp_path):
    write(tmp_path / "data" / "a.jsonl", [{"text": "x"}])
    write(tmp_path / "data" / "b.csv", [{"text": "y"}])
    assert check_dataset(spec(tmp_path / "data", "text")) == [
        "dataset 'math_sft' (data): the files mix types (.csv, .jsonl); keep one type per dataset"
    ]


def test_json_and_jsonl_together_are_one_type(tmp_path):
    write(tmp_path / "data" / "a.jsonl", [{"text": "x"}])
    write(tmp_path / "data" / "b.json", [{"text": "y"}])
    assert check_dataset(spec(tmp_path / "data", "text")) == []


@pytest.mark.parametrize("ext", ALL_TYPES)
def test_zero_byte_file(tmp_path, ext):
    (tmp_path / f"d{ext}").touch()
    assert check_dataset(spec(tmp_path / f"d{ext}", "text")) == [f"dataset 'math_sft' (d{ext}): the file is empty"]


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("d.jsonl", "\n\n", "the file holds no records"),
        ("d.json", "[ ]", "the file holds no records"),
        ("d.csv", "text\n", "the file has a header but no rows"),
    ],
)
def test_file_without_records(tmp_path, name, content, why):
    (tmp_path / name).write_text(content)
    assert check_dataset(spec(tmp_path / name, "text")) == [f"dataset 'math_sft' ({name}): {why}"]


def test_parquet_without_rows(tmp_path):
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "d.parquet")
    assert check_dataset(spec(tmp_path / "d.parquet", "text")) == [
        "dataset 'math_sft' (d.parquet): the file holds no rows"
    ]


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("d.jsonl", '{"text": "x"\n', "line 1 is not valid JSON"),
        ("d.jsonl", '\n["x"]\n', "line 2 is not a JSON object"),
        ("d.json", '[{"text": "x"}, {"text": }]', "record 2 is not valid JSON"),
        ("d.json", '[{"text": "x"} {"text": "y"}]', "record 2 is not valid JSON: expected ','"),
        ("d.json", '[{"text": "x"}', "the JSON array is not closed"),
        ("d.json", "[1, 2]", "record 1 is not a JSON object"),
        ("d.parquet", "not parquet at all", "the file is not valid Parquet"),
    ],
)
def test_unparseable_first_records(tmp_path, name, content, why):
    (tmp_path / name).write_text(content)
    [problem] = check_dataset(spec(tmp_path / name, "text"))
    assert problem.startswith(f"dataset 'math_sft' ({name}): {why}")


def test_not_utf8(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "\xff"}\n')
    [problem] = check_dataset(spec(tmp_path / "d.jsonl", "text"))
    assert "the file is not UTF-8 text" in problem


def test_json_array_of_strings_reads_as_text(tmp_path):
    (tmp_path / "d.json").write_text('["one", "two"]')
    assert check_dataset(spec(tmp_path / "d.json", "text")) == []


def test_json_reads_only_the_first_records(tmp_path):
    big = "x" * 200_000  # a record longer than one read block
    rows = [json.dumps({"text": big})] * 5
    (tmp_path / "d.json").write_text("[" + ",".join(rows) + ", {broken")
    assert check_dataset(spec(tmp_path / "d.json", "text")) == []
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n{broken\n")
    assert check_dataset(spec(tmp_path / "d.jsonl", "text")) == []


def test_json_lines_in_a_json_file(tmp_path):
    (tmp_path / "d.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert check_dataset(spec(tmp_path / "d.json", "text")) == []


@pytest.mark.parametrize("ext", STRUCTURED)
@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ("hello", "must be a list of {role, content} messages, got a string"),
        ([], "is an empty list of messages"),
        ([{"role": "user", "content": "a"}, {"text": "b"}], "item 1 must be a {role, content} message"),
        (["hi"], "item 0 must be a {role, content} message, got a string"),
    ],
)
def test_messages_of_the_wrong_shape(tmp_path, ext, messages, why):
    data = write(tmp_path / f"d{ext}", [{"conversation": messages}])
    [problem] = check_dataset(spec(data, "messages", {"messages": "conversation"}))
    assert problem.startswith(
        f"dataset 'math_sft' (d{ext}): record 1: column 'conversation' (mapped to 'messages') {why}"
    )


@pytest.mark.parametrize("ext", STRUCTURED)
def test_preference_chosen_must_be_text_or_messages(tmp_path, ext):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": None, "rejected": "b"}]
    [problem] = check_dataset(spec(write(tmp_path / f"d{ext}", rows), "preference"))
    assert problem == (
        f"dataset 'math_sft' (d{ext}): record 2: column 'chosen' must be a string "
        "or a list of {role, content} messages, got null"
    )


def test_text_must_be_a_string(tmp_path):
    data = write(tmp_path / "d.jsonl", [{"text": 3}])
    assert check_dataset(spec(data, "text")) == [
        "dataset 'math_sft' (d.jsonl): record 1: column 'text' must be a string, got a number"
    ]


def test_prompt_extras_are_not_shape_checked(tmp_path):
    data = write(tmp_path / "d.jsonl", [{"prompt": "2+2?", "answer": 4, "tests": ["assert f()"]}])
    assert check_dataset(spec(data, "prompt")) == []


def test_every_shard_is_checked_and_repeats_are_capped(tmp_path):
    for i in range(6):
        write(tmp_path / "shards" / f"{i}.jsonl", [{"text": "x"}] if i == 0 else [{"body": "x"}])
    problems = check_dataset(spec(tmp_path / "shards", "text"))
    assert len(problems) == 4
    assert problems[0].startswith("dataset 'math_sft' (shards/1.jsonl): column 'text' is missing")
    assert problems[-1] == "dataset 'math_sft' (shards): 2 more files have problems"


def test_hub_datasets_are_not_checked():
    assert check_dataset({"name": "h", "hub": "org/name", "revision": "main", "format": "messages"}) == []


def test_import_is_light():
    code = (
        "import barctl.data.spec_check, sys; "
        "heavy = {'torch', 'datasets', 'pyarrow'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
