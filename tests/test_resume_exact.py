"""A stage or router training killed after a checkpoint and resumed ends bitwise where an
uninterrupted run ends (CPU training is deterministic); a checkpoint that does not hold the
model's tensors is refused instead of silently resuming from the branch's weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from barctl.errors import BarctlError
from barctl.model.freezing import apply_trainable
from barctl.model.upcycle import branch
from barctl.training import common
from barctl.training.router_training import as_prompt_completion, train_router
from tests.helpers import make_dense_checkpoint
from tests.test_stages import CHATS, Kill, make_context, project, run_stage, tensors  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    differing = [name for name in a if not torch.equal(a[name], b[name])]
    assert differing == []


def test_a_killed_sft_stage_resumes_to_the_same_weights(project, tmp_path):
    settings = {"max_steps": 6, "save_steps": 2, "learning_rate": 3e-2}
    (tmp_path / "whole").mkdir()
    whole = make_context(project, "sft", "chat", tmp_path / "whole", **settings)
    run_stage(whole)

    (tmp_path / "killed").mkdir()
    messages = []
    killed = make_context(project, "sft", "chat", tmp_path / "killed", messages=messages, **settings)
    with pytest.raises(KeyboardInterrupt):
        run_stage(killed, Kill(at=4))
    run_stage(killed)
    assert "resuming from checkpoint-4" in messages
    trained = tensors(whole.out)
    assert not torch.equal(trained["model.layers.0.block_sparse_moe.gate.weight"],
                           tensors(project / "moe")["model.layers.0.block_sparse_moe.gate.weight"])
    assert_bitwise_equal(tensors(killed.out), trained)


def test_resuming_from_a_checkpoint_without_the_models_tensors_is_refused(project, tmp_path):
    ctx = make_context(project, "sft", "chat", tmp_path, max_steps=6, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run_stage(ctx, Kill(at=4))
    # What barctl 0.x wrote: the legacy per-expert names, which the Trainer's loader would skip.
    shutil.copy(project / "moe" / "model.safetensors", ctx.work / "trainer" / "checkpoint-4" / "model.safetensors")
    with pytest.raises(BarctlError, match=r"cannot resume from .*checkpoint-4: its tensors are not the model's "
                                          r"\(missing: model\.layers\.0\.mlp\.experts\.down_proj, .*; unexpected: "
                                          r"model\.layers\.0\.block_sparse_moe\.experts\.0\.w1\.weight"):
        run_stage(ctx)


def test_a_tied_tensor_saved_once_is_resumable(tmp_path, tokenizer_dir):
    anchor = make_dense_checkpoint(tmp_path / "anchor", tokenizer_dir=tokenizer_dir, tie_word_embeddings=True)
    branch(anchor, tmp_path / "moe", ffn_dir=anchor, seed=0, max_shard_bytes=10**9)
    model, _ = common.load_model(tmp_path / "moe")
    with common.checkpoints_as_trained(model):
        model.save_pretrained(tmp_path / "checkpoint")
    common.check_resumable(model, tmp_path / "checkpoint")
    with pytest.raises(BarctlError, match="unexpected: model.layers.0.block_sparse_moe"):
        common.check_resumable(model, tmp_path / "moe")
    model.save_pretrained(tmp_path / "final")  # outside training, the stock layout again
    assert tensors(tmp_path / "final").keys() == tensors(tmp_path / "moe").keys()


def trained_router(project: Path, output_dir: Path, *callbacks, messages: list | None = None
                   ) -> dict[str, torch.Tensor]:
    import datasets

    model, tokenizer = common.load_model(project / "moe")
    apply_trainable(model, ["router"])
    sample = datasets.Dataset.from_list([as_prompt_completion({"messages": m}) for m in CHATS])
    train = {"aux_loss_weight": 0.0, "training": {"learning_rate": 3e-2, "batch_size": 2, "max_steps": 6,
                                                  "save_steps": 2, "lr_scheduler": "constant", "max_length": 64}}
    say = messages.append if messages is not None else (lambda message: None)
    train_router(model, tokenizer, sample, train, output_dir, say, callbacks)
    return {name: param.detach().clone() for name, param in model.named_parameters() if ".mlp.gate." in name}


def test_killed_router_training_resumes_to_the_same_router(project, tmp_path):
    whole = trained_router(project, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        trained_router(project, tmp_path / "killed", Kill(at=4))
    messages = []
    resumed = trained_router(project, tmp_path / "killed", messages=messages)
    assert "resuming from checkpoint-4" in messages
    initial, _ = common.load_model(project / "moe")
    assert not torch.equal(whole["model.layers.0.mlp.gate.weight"],
                           initial.get_parameter("model.layers.0.mlp.gate.weight"))
    assert_bitwise_equal(resumed, whole)
