"""`barctl init` writes a starter project that plans and applies offline, and never overwrites files."""

import json

from barctl.scaffold import MANIFEST
from tests.projects import apply, barctl

FILES = {MANIFEST, "data/math.jsonl", "data/code.jsonl", "data/general.jsonl", "tokenizer/tokenizer.json",
         "tokenizer/tokenizer_config.json", ".gitignore", "README.md"}
NODES = {"base", "experts.math.branch", "experts.math.sft", "experts.code.branch", "experts.code.sft",
         "merge", "router", "export"}


def written(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_init_writes_a_project_that_plans_applies_and_then_has_no_changes(tmp_path):
    root = tmp_path / "My Project"
    result = barctl("init", root)
    assert result.exit_code == 0, result.output
    assert set(written(root)) == FILES
    manifest = (root / MANIFEST).read_text()
    assert manifest.startswith("# yaml-language-server: $schema=") and "manifest.schema.json" in manifest
    assert "name: my-project" in manifest
    assert (root / ".gitignore").read_text().splitlines()[1:] == [".barctl/", "out/"]
    for name in ("math", "code", "general"):
        rows = [json.loads(line) for line in (root / "data" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) >= 4 and all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)

    plan = barctl("plan", root / MANIFEST, "--json")
    assert plan.exit_code == 0, plan.output
    actions = {a["node_id"]: a["action"] for a in json.loads(plan.output)["actions"]}
    assert actions == dict.fromkeys(NODES, "create")

    apply(root / MANIFEST)
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(root / "out" / "my-project-moe")).__name__ == "MixtralForCausalLM"
    assert barctl("plan", root / MANIFEST, "--detailed-exitcode").exit_code == 0


def test_init_refuses_to_overwrite_and_touches_nothing(tmp_path):
    assert barctl("init", tmp_path).exit_code == 0
    (tmp_path / MANIFEST).write_text("# my own manifest\n")
    (tmp_path / "data" / "math.jsonl").unlink()
    before = written(tmp_path)
    result = barctl("init", tmp_path)
    assert result.exit_code == 1
    assert "would overwrite" in result.output and str(tmp_path / MANIFEST) in result.output
    assert "Traceback" not in result.output
    assert written(tmp_path) == before  # not even the missing file came back


def test_init_into_a_directory_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    assert barctl("init", tmp_path).exit_code == 0
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert set(written(tmp_path)) == FILES | {"notes.txt"}
