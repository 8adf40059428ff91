"""`launcher: {kind: accelerate, num_processes: 2}` runs two gloo ranks on a CPU machine: they
train what one process trains at the same global batch, one rank prepares the work directory
and reports progress, and the anchor slot stays bitwise intact."""

from __future__ import annotations

import json
import os
import re
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


def sft_project(root: Path, tokenizer_dir: Path, batch_size: int, launcher: dict | None = None,
                **training) -> Path:
    root.mkdir(parents=True)
    (root / "chat.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 16}]},
             "training": {"learning_rate": 1e-2, "batch_size": batch_size, "max_length": 64, "epochs": 1,
                          "lr_scheduler": "constant", **training}}
    if launcher:
        stage["launcher"] = launcher
    manifest = tiny_manifest({"math": {"stages": [stage]}}, datasets={"chat": {"path": "chat.jsonl", "format": "messages"}})
    return make_project(root, tokenizer_dir, manifest)


def artifacts(manifest: Path) -> dict[str, dict]:
    return yaml.safe_load((manifest.parent / "barctl.lock").read_text())["nodes"]


def artifact(manifest: Path, node_id: str) -> Path:
    return manifest.parent / artifacts(manifest)[node_id]["artifact"]["path"]


def weights(manifest: Path, node_id: str) -> dict[str, torch.Tensor]:
    return tensors(artifact(manifest, node_id))


def tensors(path: Path) -> dict[str, torch.Tensor]:
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
    check_anchor_slot(artifact(manifest, NODE), artifact(manifest, "experts.math.branch"))


def test_one_rank_prepares_the_work_directory_and_reports_progress(launched):
    manifest, output = launched
    assert "--num_processes 2 --multi_gpu" in output
    assert output.count("discarding checkpoints of an earlier, different configuration") == 1
    # rank 0's progress, forwarded by apply as the node's own
    assert len(re.findall(rf"{re.escape(NODE)}: training 4/4 steps \(100%\), loss ", output)) == 1
    state = manifest.parent / ".barctl"
    assert not any((state / "work" / NODE).iterdir())  # checkpoints cleared once the model is saved
    assert not (state / "launched" / NODE).exists()  # moved into the store


ZERO = {
    2: {"stage": 2},
    # every parameter partitioned, however small (the default keeps tensors under 1e5 elements whole)
    3: {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": True},
}
ACCELERATE_DEEPSPEED = ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: ds.json\n"
                        "  zero3_init_flag: false\nnum_machines: 1\nnum_processes: 2\n")


@pytest.fixture(scope="module")
def one_process_decayed(tmp_path_factory, tokenizer_dir) -> Path:
    manifest = sft_project(tmp_path_factory.mktemp("mp") / "one-decay", tokenizer_dir, batch_size=4, weight_decay=0.1)
    apply(manifest, "--target", NODE)
    return manifest


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_zero_keeps_the_anchor_in_the_fp32_master_copy_too(zero_stage, one_process_decayed, tmp_path,
                                                                     tokenizer_dir):
    """AdamW's weight decay moves the anchor's elements in ZeRO's fp32 master copy (by 3.5e-4 here under
    ZeRO-2 when only the module was restored); ZeRO-3 partitions the parameters themselves."""
    from barctl.engine.project import Project
    from barctl.manifest.recipe import load_recipe
    from barctl.runners import NodeContext
    from barctl.training.launch import worker_paths, write_context

    manifest = sft_project(tmp_path / "ds", tokenizer_dir, batch_size=2, weight_decay=0.1)
    (tmp_path / "ds" / "ds.json").write_text(json.dumps({
        "zero_optimization": ZERO[zero_stage], "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}))
    (tmp_path / "ds" / "accelerate.yaml").write_text(ACCELERATE_DEEPSPEED)
    apply(manifest, "--target", "experts.math.branch")
    project = Project.load(manifest)  # the probe's ranks read the stage's context as apply would hand it
    entries = project.lockfile.entries
    inputs = {i: project.store.root / entries[i]["artifact"]["path"] for i in project.graph[NODE].inputs}
    write_context(NodeContext(project.recipe, project.graph[NODE], inputs, tmp_path / "unused",
                              project.store.work_dir(NODE)))
    result = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    finished = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate.yaml", "--num_processes", "2",
         str(REPO / "tests" / "deepspeed_probe.py"), str(manifest), NODE, str(result)],
        cwd=manifest.parent, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert json.loads(result.read_text()) == {"master_anchor_drift": 0.0}
    out, _ = worker_paths(load_recipe(manifest), NODE)
    check_anchor_slot(out, artifact(manifest, "experts.math.branch"))
    trained, expected = tensors(out), weights(one_process_decayed, NODE)
    for name in expected:
        torch.testing.assert_close(trained[name], expected[name], rtol=0, atol=1e-5, msg=name)


def test_an_anchor_the_model_cannot_hold_exactly_fails_at_the_first_step(tmp_path, tokenizer_dir):
    """DeepSpeed's bf16 keeps the module in bf16: an fp32 anchor would fail the bitwise check only after
    the whole stage; the guard says so right after the first optimiser step."""
    from barctl.errors import BarctlError
    from barctl.model.freezing import AnchorGuard, apply_trainable
    from barctl.model.upcycle import branch
    from barctl.training.common import load_model
    from tests.helpers import make_dense_checkpoint

    anchor = make_dense_checkpoint(tmp_path / "anchor", tokenizer_dir=tokenizer_dir)
    other = make_dense_checkpoint(tmp_path / "other", tokenizer_dir=tokenizer_dir, seed=1)
    branch(anchor, tmp_path / "moe", ffn_dir=other, seed=0, max_shard_bytes=10**9)
    model, _ = load_model(tmp_path / "moe")
    apply_trainable(model, ["expert", "router"])
    guard = AnchorGuard(model)
    guard.restore()
    guard.verify()
    model.to(torch.bfloat16)
    guard.restore()
    with pytest.raises(BarctlError, match=r"the anchor's weights \(torch.float32\) cannot stay exact in training: "
                                          r"the model keeps them in torch.bfloat16"):
        guard.verify()
