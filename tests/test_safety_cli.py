"""Exit codes as Terraform's (usage errors 1, so --detailed-exitcode 2 means changes only),
errors as JSON under --json, and `training.trl` fields refused at plan by apply's rules."""

from __future__ import annotations

import json

import pytest

from tests.projects import barctl, make_project, tiny_manifest


@pytest.mark.parametrize("args", [
    ("plan",),  # a missing argument
    ("plan", "bar.yaml", "--bogus"),  # an unknown option
    ("nope",),  # an unknown command
    ("plan", "bar.yaml", "--detailed-exitcode", "--target"),  # an option without its value
])
def test_usage_errors_exit_1_not_2(tmp_path, tokenizer_dir, args):
    make_project(tmp_path, tokenizer_dir)
    result = barctl(*[tmp_path / a if a == "bar.yaml" else a for a in args])
    assert result.exit_code == 1, result.output
    assert "Error" in result.output


def test_detailed_exitcode_2_means_changes(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir)
    assert barctl("plan", path, "--detailed-exitcode").exit_code == 2
    assert barctl("plan", path, "--detailed-exitcode", "--target", "nonode").exit_code == 1


@pytest.mark.parametrize("command", [("plan",), ("show",), ("apply", "--auto-approve"), ("eval",)])
def test_errors_print_as_json_under_json(tmp_path, tokenizer_dir, command):
    path = make_project(tmp_path, tokenizer_dir, tiny_manifest(seed="zero"))
    result = barctl(command[0], path, "--json", *command[1:])
    assert result.exit_code == 1
    document = json.loads(result.output)
    assert "seed: expected an integer" in document["error"]
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if row.startswith("seed:"))
    assert [(i["path"], i["line"]) for i in document["errors"]] == [("seed", line)]


def test_usage_errors_print_as_json_under_json(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir)
    result = barctl("plan", path, "--json", "--bogus")
    assert result.exit_code == 1
    assert json.loads(result.output) == {"error": "No such option '--bogus'. Did you mean '--out'?", "errors": []}


@pytest.mark.parametrize("kind,field", [("sft", "output_dir"), ("sft", "use_cpu"), ("dpo", "resume_from_checkpoint"),
                                        ("grpo", "reward_weights")])
def test_trl_fields_barctl_sets_are_refused_at_plan(tmp_path, tokenizer_dir, kind, field):
    formats = {"sft": "messages", "dpo": "preference", "grpo": "prompt"}
    rows = {"sft": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            "dpo": {"prompt": "hi", "chosen": "yo", "rejected": "no"},
            "grpo": {"prompt": "1+1?", "answer": "2"}}
    (tmp_path / "rows.jsonl").write_text(json.dumps(rows[kind]) + "\n")
    stage = {"kind": kind, "mix": {"sources": [{"dataset": "rows", "count": 1}]},
             "training": {"trl": {field: [1.0] if field == "reward_weights" else True}}}
    if kind == "grpo":
        stage["rewards"] = [{"name": "math_answer"}]
    manifest = tiny_manifest({"math": {"stages": [stage]}},
                             datasets={"rows": {"path": "rows.jsonl", "format": formats[kind]}})
    path = make_project(tmp_path, tokenizer_dir, manifest)
    result = barctl("plan", path)
    assert result.exit_code == 1, result.output
    assert f"experts.math.stages[0].training.trl.{field}: barctl sets it itself" in result.output


def test_a_full_disk_is_a_clean_error_and_keeps_what_was_built(tmp_path, tokenizer_dir, monkeypatch):
    import errno

    from barctl.engine.store import Store

    path = make_project(tmp_path, tokenizer_dir)
    original = Store.commit
    calls = []

    def commit(self, staged, key):
        calls.append(key)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path_for(key)))
        return original(self, staged, key)

    monkeypatch.setattr(Store, "commit", commit)
    result = barctl("apply", path, "--auto-approve")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no space left on the device" in result.output and "every node finished before is kept" in result.output
    monkeypatch.setattr(Store, "commit", original)
    assert list(json.loads(barctl("show", path, "--json").output)) == ["base"]
