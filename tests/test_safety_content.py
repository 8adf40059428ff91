"""Content, not metadata: damaged artifacts are caught from their bytes before use, a damaged
lockfile is refused naming the entry, and gates read the evaluations' own results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.projects import apply, barctl, changed, make_project, plan_json


@pytest.fixture
def built(tmp_path, tokenizer_dir) -> Path:
    manifest = make_project(tmp_path / "project", tokenizer_dir)
    apply(manifest)
    return manifest


def _entries(manifest: Path) -> dict:
    return yaml.safe_load((manifest.parent / "barctl.lock").read_text())["nodes"]


def _flip_bytes_keeping_size_and_mtime(path: Path) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    middle = len(data) - 64  # inside the last tensor's data, past the safetensors header
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_flipped_bytes_with_size_and_mtime_kept_are_repaired_before_use(built):
    root = built.parent
    shipped = (root / "out" / "moe" / "model.safetensors").read_bytes()
    merge = root / _entries(built)["merge"]["artifact"]["path"]
    _flip_bytes_keeping_size_and_mtime(merge / "model.safetensors")

    result = apply(built, "--replace", "export")  # the export reads the damaged merge
    assert "merge: repair" in result.output
    assert (root / "out" / "moe" / "model.safetensors").read_bytes() == shipped  # never shipped damaged
    assert changed(plan_json(built)) == {}  # the repaired merge matches its digest again


def test_a_damaged_artifact_found_by_a_content_check_shows_in_the_next_plan(built):
    from barctl.engine.project import Project

    weights = built.parent / _entries(built)["experts.math.branch"]["artifact"]["path"] / "model.safetensors"
    os.utime(weights, ns=(10**18, 10**18))  # old enough for the digest cache to keep it
    assert changed(plan_json(built)) == {}
    _flip_bytes_keeping_size_and_mtime(weights)
    assert changed(plan_json(built)) == {}  # planning trusts (size, mtime): a quick check, like git status
    project = Project.load(built)
    problem = project.store.verify(project.lockfile.entries["experts.math.branch"])
    assert problem is not None and "fails its digest" in problem
    assert changed(plan_json(built))["experts.math.branch"] == "repair"


LOCK_CASES = [
    ("cut at an entry", lambda text: text[: text.index("\n  merge:\n") + 1], "is cut short"),
    # Half a lockfile may or may not parse as YAML: either way it is refused as damaged or cut short.
    ("cut mid-line", lambda text: text[: len(text) // 2], ("is damaged", "is cut short")),
    ("wrong type", lambda text: text.replace("    size: ", "    size: big", 1),
     "nodes.base.artifact.size: expected int"),
    ("path outside the store", lambda text: text.replace("path: .barctl/store/", "path: ../../etc/", 1),
     "nodes.base.artifact.path: ../../etc/"),
    ("entry not a mapping", lambda text: text.replace("  base:\n", "  base: 5\n  old:\n", 1),
     "nodes.base: expected a mapping, got int"),
    ("alias bomb", lambda text: "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + text,
     "alias expansion too large"),
]


@pytest.mark.parametrize("name,damage,expected", LOCK_CASES, ids=[c[0] for c in LOCK_CASES])
def test_a_damaged_lockfile_is_refused_naming_the_entry_and_never_written(built, name, damage, expected):
    lock = built.parent / "barctl.lock"
    damaged = damage(lock.read_text())
    lock.write_text(damaged)
    for command in (("plan",), ("apply", "--auto-approve"), ("show",)):
        result = barctl(command[0], built, *command[1:])
        assert result.exit_code == 1, result.output
        alternatives = expected if isinstance(expected, tuple) else (expected,)
        assert any(e in result.output for e in alternatives) and str(lock) in result.output, result.output
        assert "Traceback" not in result.output
    assert lock.read_text() == damaged
    assert not (built.parent.parent / "etc").exists()


def test_gates_read_scores_from_the_evaluation_artifact_not_the_lockfile(tmp_path, tokenizer_dir):
    from tests.test_evals import EVALS, evaluated_project

    gate = {"name": "merged-is-perfect", "model": "merged", "at_least": 1.0, "domains": ["general"]}
    manifest = evaluated_project(tmp_path, tokenizer_dir, evals={**EVALS, "models": ["merged"]}, gates=[gate])
    assert barctl("apply", manifest, "--auto-approve").exit_code == 1  # the gate fails honestly

    lock = tmp_path / "barctl.lock"
    text = lock.read_text()
    document = yaml.safe_load(text)
    document["nodes"]["eval.merged"]["metrics"]["domains"]["general"]["score"] = 1.0
    header, footer = text.splitlines(keepends=True)[0], text.splitlines(keepends=True)[-1]
    lock.write_text(header + yaml.safe_dump(document, sort_keys=False) + footer)

    result = barctl("apply", manifest, "--auto-approve")
    assert result.exit_code == 1
    assert "gate 'merged-is-perfect' failed on general" in result.output
    assert not (tmp_path / "out" / "moe").exists()
    results = json.loads((tmp_path / _entries(manifest)["eval.merged"]["artifact"]["path"] / "results.json")
                         .read_text())
    assert results["domains"]["general"]["score"] < 1.0


def test_a_truncated_safetensors_file_never_enters_the_store(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from barctl.engine.store import Store
    from barctl.errors import BarctlError

    store = Store(tmp_path)
    with store.staging("ab" * 32) as staged:
        save_file({"w": np.ones((4, 4), dtype=np.float32)}, str(staged / "model.safetensors"))
        whole = (staged / "model.safetensors").read_bytes()
        (staged / "model.safetensors").write_bytes(whole[:-10])
        with pytest.raises(BarctlError, match="is incomplete: its header describes 64 bytes of tensors, "
                                              "the file holds 54"):
            store.commit(staged, "ab" * 32)
    assert not store.path_for("ab" * 32).exists()


def test_plan_refuses_a_local_anchor_with_a_cut_short_safetensors_file(built):
    import shutil

    from tests.projects import tiny_manifest, write_manifest

    root = built.parent
    anchor = root / "models" / "anchor"
    shutil.copytree(root / _entries(built)["base"]["artifact"]["path"] / "anchor", anchor)
    weights = anchor / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    manifest = tiny_manifest()
    manifest["base"]["anchor"] = {"path": "models/anchor"}
    write_manifest(built, manifest)
    result = barctl("plan", built)
    assert result.exit_code == 1
    line = next(i for i, row in enumerate(built.read_text().splitlines(), 1) if "path: models/anchor" in row)
    assert f"{built}:{line}:" in result.output and "model.safetensors is incomplete" in result.output


def test_a_gguf_header_that_claims_more_than_the_file_holds_is_refused_at_plan(tmp_path, tokenizer_dir):
    import struct

    from tests.projects import tiny_manifest

    lying = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62) + b"general.architecture" + bytes(64)
    (tmp_path / "model.gguf").write_bytes(lying)
    manifest = tiny_manifest()
    manifest["base"]["anchor"] = {"path": "model.gguf"}
    path = make_project(tmp_path, tokenizer_dir, manifest)
    result = barctl("plan", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "corrupt GGUF header (it claims a string of 4,611,686,018,427,387,904 bytes at byte 32, " \
           "but only 84 bytes follow)" in result.output
