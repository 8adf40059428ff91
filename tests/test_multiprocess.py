"""`launcher: {kind: accelerate, num_processes: 2}` runs two gloo ranks on a CPU machine: they
train what one process trains at the same global batch, one rank prepares the work directory
and reports progress, and the anchor slot stays bitwise intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from barctl.model.checkpoint import CheckpointReader
from barctl.model.freezing import check_anchor_slot
from tests.projects import apply, make_project, tiny_manifest

REPO = Path(__file__).resolve().parent.parent
CHATS = [[{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}"}]
         for a in range(4) for b in range(4)]
NODE = "experts.math.sft"


def sft_project(root: Path, tokenizer_dir: Path, batch_size: int, launcher: dict | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "chat.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 16}]},
             "training": {"learning_rate": 1e-2, "batch_size": batch_size, "max_length": 64, "epochs": 1,
                          "lr_scheduler": "constant"}}
    if launcher:
        stage["launcher"] = launcher
    manifest = tiny_manifest({"math": {"stages": [stage]}}, datasets={"chat": {"path": "chat.jsonl", "format": "messages"}})
    return make_project(root, tokenizer_dir, manifest)


def artifacts(manifest: Path) -> dict[str, dict]:
    return yaml.safe_load((manifest.parent / "barctl.lock").read_text())["nodes"]


def weights(manifest: Path, node_id: str) -> dict[str, torch.Tensor]:
    path = manifest.parent / artifacts(manifest)[node_id]["artifact"]["path"]
    with CheckpointReader(path) as reader:
        return {name: reader.get(name) for name in reader.names()}


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tokenizer_dir) -> tuple[Path, str]:
    """A 2-rank SFT stage applied by the real CLI, over a work directory left by another configuration."""
    manifest = sft_project(tmp_path_factory.mktemp("mp") / "two", tokenizer_dir, batch_size=2,
                           launcher={"kind": "accelerate", "num_processes": 2})
    apply(manifest, "--target", "experts.math.branch")
    work = manifest.parent / ".barctl" / "work" / NODE
    (work / "trainer" / "checkpoint-2").mkdir(parents=True)
    (work / "node-key").write_text("a different configuration")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run([sys.executable, "-m", "barctl", "apply", str(manifest), "--auto-approve",
                               "--target", NODE], cwd=manifest.parent, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return manifest, finished.stdout


def test_two_ranks_train_what_one_process_trains_at_the_same_global_batch(launched, tmp_path, tokenizer_dir):
    manifest, _ = launched
    single = sft_project(tmp_path / "one", tokenizer_dir, batch_size=4)
    apply(single, "--target", NODE)
    two, one = artifacts(manifest)[NODE]["metrics"], artifacts(single)[NODE]["metrics"]
    assert two["steps"] == one["steps"] == 4  # 16 rows at a global batch of 4: one rank alone would take 8 steps
    assert two["tokens"] == one["tokens"]
    trained, expected, branch = weights(manifest, NODE), weights(single, NODE), weights(single, "experts.math.branch")
    assert sorted(trained) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(trained[name], expected[name], rtol=0, atol=1e-5, msg=name)
    assert not torch.allclose(expected["model.layers.0.block_sparse_moe.experts.1.w1.weight"],
                              branch["model.layers.0.block_sparse_moe.experts.1.w1.weight"])
    check_anchor_slot(manifest.parent / artifacts(manifest)[NODE]["artifact"]["path"],
                      manifest.parent / artifacts(manifest)["experts.math.branch"]["artifact"]["path"])


def test_one_rank_prepares_the_work_directory_and_reports_progress(launched):
    manifest, output = launched
    assert "--num_processes 2 --multi_gpu" in output
    assert output.count("discarding checkpoints of an earlier, different configuration") == 1
    assert output.count("step 4/4") == 1
    state = manifest.parent / ".barctl"
    assert not any((state / "work" / NODE).iterdir())  # checkpoints cleared once the model is saved
    assert not (state / "launched" / NODE).exists()  # moved into the store
