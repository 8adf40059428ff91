"""Data checked whole at plan: every row of every local dataset (format, columns, roles,
UTF-8), each problem named by file and line, each file read once per content."""

from __future__ import annotations

import json

from barctl.data.rows import RowsChecked, file_row_problems
from tests.projects import barctl, make_project, tiny_manifest

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _project(tmp_path, tokenizer_dir, lines: list[bytes], name: str = "chat.jsonl", fmt: str = "messages"):
    (tmp_path / name).write_bytes(b"".join(lines))
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]}}
    manifest = tiny_manifest({"math": {"stages": [stage]}}, datasets={"chat": {"path": name, "format": fmt}})
    return make_project(tmp_path, tokenizer_dir, manifest)


def _line(record) -> bytes:
    return (json.dumps(record) + "\n").encode()


def test_a_bad_row_300_is_refused_at_plan_with_its_file_and_line(tmp_path, tokenizer_dir):
    lines = [_line(GOOD)] * 299 + [_line({"messages": "hi there"})] + [_line(GOOD)] * 10
    path = _project(tmp_path, tokenizer_dir, lines)
    result = barctl("plan", path)
    assert result.exit_code == 1
    assert "datasets.chat: dataset 'chat' (" in result.output
    assert "chat.jsonl): line 300: column 'messages' must be a list of {role, content} messages, got a string" \
        in result.output
    assert not (tmp_path / "barctl.lock").exists()


def test_roles_invalid_json_and_non_utf8_rows_are_named_by_line(tmp_path, tokenizer_dir):
    no_role = {"messages": [{"content": "hi"}]}
    lines = [_line(GOOD)] * 299 + [_line(no_role), b"\n", b'{"messages": [\xff]}\n']  # past what peek reads
    path = _project(tmp_path, tokenizer_dir, lines)
    result = barctl("plan", path)
    assert result.exit_code == 1
    assert "line 300: column 'messages' item 0 must be a {role, content} message" in result.output
    assert "line 302 is not UTF-8 text" in result.output


def test_many_bad_rows_are_counted_not_listed(tmp_path):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": i}) + "\n" for i in range(10)))
    problems = file_row_problems(tmp_path / "t.jsonl", "text", {}, ())
    assert problems[:3] == [f"line {i}: column 'text' must be a string, got a number" for i in (1, 2, 3)]
    assert problems[3:] == ["7 more rows have problems"]


def test_csv_rows_and_required_columns_name_their_line(tmp_path):
    (tmp_path / "eval.csv").write_text("prompt,answer\nwhat is 1+1?,2\n\"multi\nline\",3\nno answer\n")
    problems = file_row_problems(tmp_path / "eval.csv", "prompt", {}, ("answer",))
    assert problems == ["line 5: column 'answer' is missing"]  # the quoted row spans lines 3 and 4
    mapped = file_row_problems(tmp_path / "eval.csv", "prompt", {"prompt": "question"}, ())
    assert mapped[0] == "line 2: column 'question' (mapped to 'prompt') is missing"


def test_each_file_is_read_once_per_content(tmp_path, monkeypatch):
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"text": "a"}) + "\n")
    checked = RowsChecked(tmp_path / ".barctl")
    assert checked.problems(data, "text", {}, ()) == []
    checked.save()

    import barctl.data.rows as rows

    monkeypatch.setattr(rows, "_scan", lambda *a: (["read again"], 1))
    again = RowsChecked(tmp_path / ".barctl")
    assert again.problems(data, "text", {}, ()) == []  # remembered across plans
    assert again.rows(data, "text", {}, ()) == 1
    assert again.problems(data, "prompt", {}, ()) == ["read again"]  # another format is another check
    data.write_text(json.dumps({"text": "b"}) + "\n")
    assert again.problems(data, "text", {}, ()) == ["read again"]  # new content is checked again
