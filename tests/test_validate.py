"""Malformed manifests: every problem reported at once, located, exit 1, no traceback,
nothing written."""

from __future__ import annotations

import json

import pytest

from tests.projects import barctl, make_project, tiny_manifest

GOOD = tiny_manifest()


def _with(path: tuple, value) -> dict:
    manifest = json.loads(json.dumps(GOOD))
    target = manifest
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return manifest


CASES = [
    ("unknown field", _with(("output", "dri"), "x"), "output.dri: unknown field 'dri' (did you mean 'dir'?)"),
    ("wrong enum", _with(("routing",), {"shared": "avg"}), "routing.shared: 'avg' is not one of"),
    ("wrong type", _with(("seed",), "zero"), "seed: expected an integer, got str 'zero'"),
    ("bad expert name", _with(("experts",), {"Math": {}}), "experts.Math: name 'Math' is not allowed"),
    ("no experts", _with(("experts",), {}), "experts: declare at least one expert"),
    ("two sources", _with(("base", "anchor"), {"hub": "a/b", "path": "tok"}),
     "base.anchor: give exactly one of path, hub, package or random (found: path, hub)"),
    ("missing path", _with(("base", "anchor"), {"path": "nowhere"}),
     "base.anchor.path: no such file or directory: nowhere"),
    ("unknown dataset", _with(("experts",), {"math": {"stages": [
        {"kind": "sft", "mix": {"sources": [{"dataset": "nope", "count": 3}]}}]}}),
     "experts.math.stages[0].mix.sources[0].dataset: unknown dataset 'nope'"),
    ("duplicate stage", _with(("experts",), {"math": {"stages": [{"kind": "dpo"}, {"kind": "dpo"}]}}),
     "stage name 'dpo' is used twice"),
    ("grpo without rewards", _with(("experts",), {"math": {"stages": [{"kind": "grpo"}]}}),
     "a grpo stage needs `rewards`"),
    ("top_k too large", _with(("routing",), {"top_k": 7}), "top_k 7 exceeds the merged model's 3 experts"),
    ("output is the project", _with(("output", "dir"), "."), "the output must be a directory of its own"),
    ("pretrained ffn without pretrained", _with(("experts",), {"math": {"ffn": "pretrained"}}),
     "ffn: pretrained needs base.pretrained"),
    ("version", _with(("version",), 2), "version: must be 1, got 2"),
]


@pytest.mark.parametrize("name,manifest,expected", CASES, ids=[c[0] for c in CASES])
def test_each_problem_is_reported_with_its_path_and_line(tmp_path, tokenizer_dir, name, manifest, expected):
    path = make_project(tmp_path, tokenizer_dir, manifest)
    for command in ("validate", "plan", "apply"):
        result = barctl(command, path, *(["--auto-approve"] if command == "apply" else []))
        assert result.exit_code == 1, result.output
        assert expected in result.output
        assert "Traceback" not in result.output
        assert "bar.yaml:" in result.output  # located: file and line
    assert not (tmp_path / ".barctl").exists()
    assert not (tmp_path / "barctl.lock").exists()


def test_all_problems_come_at_once_with_lines(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir)
    path.write_text(
        "version: 1\n"
        "base:\n"
        "  anchor: {path: nowhere}\n"
        "experts:\n"
        "  math:\n"
        "    stages:\n"
        "      - kind: sftt\n"
        "  code: {ffn: anchr}\n"
        "output: {dir: out, dtype: fp8}\n"
    )
    result = barctl("validate", path)
    assert result.exit_code == 1
    assert "5 errors" in result.output  # sftt, its missing mix, anchr, fp8, nowhere
    for located in ("bar.yaml:3:", "bar.yaml:7:", "bar.yaml:8:", "bar.yaml:9:"):
        assert located in result.output


@pytest.mark.parametrize("text,expected", [
    (b"version: 1\nversion: 1\n", "duplicate key"),
    (b"version: !!python/object:os.system 1\n", "tags are not allowed"),
    (b"version: [1\n", "bar.yaml:"),
    (b"version: \xff\xfe\n", "not valid UTF-8"),
    (b"", "the manifest is empty"),
    (b"- a\n- b\n", "mapping"),
    (b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e]\n",
     "alias expansion too large"),
])
def test_hostile_or_broken_yaml_gets_a_clean_error(tmp_path, text, expected):
    path = tmp_path / "bar.yaml"
    path.write_bytes(text)
    result = barctl("validate", path)
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output


def test_validate_json_lists_errors(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir, _with(("output", "dri"), "x"))
    result = barctl("validate", path, "--json")
    report = json.loads(result.output)
    assert report["valid"] is False
    assert report["errors"][0]["path"] == "output.dri" and report["errors"][0]["line"] >= 1


def test_a_valid_manifest_validates(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir)
    result = barctl("validate", path)
    assert result.exit_code == 0 and "is valid" in result.output


def test_unsupported_family_is_refused_at_plan_time_with_the_reason(tmp_path, tokenizer_dir):
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    path = make_project(tmp_path, tokenizer_dir, _with(("base", "anchor"), {"path": "gpt2"}))
    result = barctl("plan", path)
    assert result.exit_code == 1
    assert "base.anchor" in result.output and "gpt2" in result.output and "llama" in result.output
    assert "Traceback" not in result.output


def test_a_damaged_lockfile_is_reported_and_never_overwritten(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir)
    lock = tmp_path / "barctl.lock"
    lock.write_text("version: 1\nnodes: [oops\n")
    for command in ("plan", "apply"):
        result = barctl(command, path, *(["--auto-approve"] if command == "apply" else []))
        assert result.exit_code == 1 and "damaged" in result.output
    assert lock.read_text() == "version: 1\nnodes: [oops\n"


def test_lockfile_of_another_manifest_is_refused(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir)
    (tmp_path / "barctl.lock").write_text("version: 1\nmanifest: other.yaml\nnodes: {}\n")
    result = barctl("plan", path)
    assert result.exit_code == 1 and "records the manifest other.yaml" in result.output


def test_trl_passthrough_fields_are_checked_at_plan_time(tmp_path, tokenizer_dir):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "1+1?", "answer": "2"}\n')
    manifest = tiny_manifest({"math": {"stages": [{
        "kind": "grpo",
        "mix": {"sources": [{"dataset": "prompts", "count": 4}]},
        "rewards": [{"name": "math_answer"}],
        "training": {"trl": {"num_generationz": 4, "num_train_epochs": 2, "beta": 0.0}},
    }]}}, datasets={"prompts": {"path": "prompts.jsonl", "format": "prompt"}})
    path = make_project(tmp_path, tokenizer_dir, manifest)
    result = barctl("plan", path)
    assert result.exit_code == 1
    assert "trl.num_generationz: unknown field 'num_generationz' of GRPOConfig " \
           "(did you mean 'num_generations'?)" in result.output
    assert "trl.num_train_epochs: set it as training.epochs" in result.output
    assert "beta" not in result.output
