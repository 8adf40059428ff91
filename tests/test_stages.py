"""Stage nodes on a tiny branched MoE (CPU, a few steps each): every kind learns, frozen groups
stay put, the anchor slot stays bitwise equal, `trl:` is checked, and a killed stage resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from barctl.engine.graph import Node, stage_config
from barctl.errors import BarctlError
from barctl.manifest.recipe import load_recipe
from barctl.model.checkpoint import CheckpointReader
from barctl.model.freezing import anchor_slot
from barctl.model.upcycle import branch
from barctl.runners import NodeContext, runner_for
from tests.helpers import make_dense_checkpoint
from tests.projects import tiny_manifest, write_manifest

TEXTS = ["The quick brown fox jumps over the lazy dog.", "What is 12 + 30? The answer is 42.",
         "def add(a, b):\n    return a + b", "Mixture of experts models route each token."]
CHATS = [[{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}"}]
         for a, b in [(12, 30), (1, 2), (5, 5), (7, 8)]]
DATA = {
    "text": [{"text": t} for t in TEXTS],
    "chat": [{"messages": m} for m in CHATS],
    "pairs": [{"prompt": f"Q{i}: say yes.", "chosen": " yes yes", "rejected": " no no"} for i in range(4)],
    "prompts": [{"prompt": f"Question {i}:", "answer": "a"} for i in range(4)],
}
FORMATS = {"text": "text", "chat": "messages", "pairs": "preference", "prompts": "prompt"}
FAST = {"learning_rate": 1e-2, "batch_size": 4, "lr_scheduler": "constant", "max_length": 64}


def letter_a_reward(prompts, completions, **columns):
    """Share of a completion's characters that are the letter `a`: a reward a tiny model learns fast."""
    return [c.count("a") / max(len(c), 1) for c in completions]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tokenizer_dir) -> Path:
    """A project directory with the datasets, and branched tiny MoEs (slot 1 differs from slot 0):
    `moe` (Mixtral, from Llama) and `moe-olmo` (FlexOlmo, from OLMo 2)."""
    root = tmp_path_factory.mktemp("stages")
    shutil.copytree(tokenizer_dir, root / "tok")  # the manifest's anchor names it
    for name, rows in DATA.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    anchor = make_dense_checkpoint(root / "anchor", tokenizer_dir=tokenizer_dir, seed=0)
    other = make_dense_checkpoint(root / "other", tokenizer_dir=tokenizer_dir, seed=1)
    branch(anchor, root / "moe", ffn_dir=other, seed=0, max_shard_bytes=10**9)
    anchor = make_dense_checkpoint(root / "anchor-olmo", "olmo2", tokenizer_dir=tokenizer_dir, seed=0)
    other = make_dense_checkpoint(root / "other-olmo", "olmo2", tokenizer_dir=tokenizer_dir, seed=1)
    branch(anchor, root / "moe-olmo", ffn_dir=other, seed=0, max_shard_bytes=10**9)
    return root


def make_context(root: Path, kind: str, dataset: str, tmp: Path, trainable=None, rewards=None,
                 messages: list | None = None, model: str = "moe", **training) -> NodeContext:
    stage = {"kind": kind, "mix": {"sources": [{"dataset": dataset, "count": 4}]},
             "training": {**FAST, **training}}
    for key, value in (("trainable", trainable), ("rewards", rewards)):
        if value:
            stage[key] = value
    manifest = tiny_manifest({"math": {"stages": [stage]}},
                             datasets={n: {"path": f"{n}.jsonl", "format": f} for n, f in FORMATS.items()})
    write_manifest(root / f"{kind}.yaml", manifest)
    recipe = load_recipe(root / f"{kind}.yaml")
    node = Node(f"experts.math.{kind}", kind, stage_config(recipe.expert("math").stages[0]),
                ("experts.math.branch",), {}, f"key-{kind}")
    (tmp / "out").mkdir()
    say = messages.append if messages is not None else (lambda message: None)
    return NodeContext(recipe, node, {"experts.math.branch": root / model}, tmp / "out", tmp / "work", say=say)


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    with CheckpointReader(model_dir) as reader:
        return {name: reader.get(name) for name in reader.names()}


class Log(TrainerCallback):
    def __init__(self):
        self.entries: list[dict] = []
        self.saved_at: list[int] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.entries.append(dict(logs or {}))

    def on_save(self, args, state, control, **kwargs):
        self.saved_at.append(state.global_step)


def run_stage(ctx: NodeContext, *callbacks) -> tuple[dict, list[dict]]:
    log = Log()
    metrics = runner_for(ctx.node.kind)(ctx, callbacks=[log, *callbacks])
    return metrics, log.entries


def values(entries: list[dict], key: str) -> list[float]:
    return [e[key] for e in entries if key in e]


def test_midtrain_trains_expert_and_router_only(project, tmp_path):
    ctx = make_context(project, "midtrain", "text", tmp_path, max_steps=20, learning_rate=3e-2, save_steps=8)
    saves = Log()
    metrics, log = run_stage(ctx, saves)
    assert saves.saved_at == [8, 16]  # resumable checkpoints, but none at the end: the stage saves the model itself
    losses = values(log, "loss")
    assert losses[-1] < 0.9 * losses[0], losses
    assert metrics["steps"] == 20 and metrics["tokens"] > 0 and metrics["train_loss"] == losses[-1]
    assert metrics["trainable_parameters"] == 2 * (3 * 32 * 64 + 32)  # slot 1 and router row 1, 2 layers
    before, after = tensors(project / "moe"), tensors(ctx.out)
    assert sorted(before) == sorted(after)
    for name in before:
        trains = ".experts.1." in name or ".gate." in name
        assert torch.equal(before[name], after[name]) != trains, name
    assert not any(ctx.work.iterdir())  # checkpoints removed after success
    assert (ctx.out / "tokenizer.json").exists()
    # TRL switches router logits on to train; a checkpoint saved so would break later generation (GRPO, evals)
    assert json.loads((ctx.out / "config.json").read_text())["output_router_logits"] is False


@pytest.mark.parametrize("model", ["moe", "moe-olmo"])
def test_sft_on_messages_learns_and_all_groups_with_weight_decay_keep_the_anchor(project, tmp_path, model):
    messages = []
    ctx = make_context(project, "sft", "chat", tmp_path, trainable=["all"], messages=messages, model=model,
                       max_steps=20, weight_decay=0.1)
    metrics, log = run_stage(ctx)
    losses = values(log, "loss")
    assert losses[-1] < 0.5 * losses[0], losses
    before, after = tensors(project / model), tensors(ctx.out)
    assert sorted(before) == sorted(after)
    for name in before:
        assert torch.equal(before[name], after[name]) == (".experts.0." in name), name
    slot0 = anchor_slot(project / model)
    for key, tensor in anchor_slot(ctx.out).items():
        assert torch.equal(tensor.view(torch.uint8), slot0[key].view(torch.uint8))
    assert any(m.startswith("training 20/20 steps (100%), loss ") for m in messages), messages


def test_sft_learns_only_the_last_assistant_turn_without_generation_markers(project, tmp_path):
    from barctl.training import common, sft

    ctx = make_context(project, "sft", "chat", tmp_path)
    model, tokenizer = common.load_model(project / "moe")
    assert not sft.masks_assistant_turns(tokenizer)  # plain ChatML: TRL cannot mark assistant tokens
    trainer = sft.build_trainer(ctx.config, model, tokenizer, common.stage_dataset(ctx.recipe, ctx.config["mix"]),
                                tmp_path / "trainer")
    for row in trainer.train_dataset:
        learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert learned == row["completion"][0]["content"] + "<|im_end|>\n"
        assert "<|im_start|>user" in tokenizer.decode(row["input_ids"])


def test_sft_splits_conversations_at_the_last_assistant_turn():
    from barctl.training.sft import split_last_turn

    chat = CHATS[0] + [{"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You're welcome"}]
    row = split_last_turn({"messages": chat})
    assert row["prompt"] == chat[:3] and row["completion"] == chat[3:]
    with pytest.raises(BarctlError, match="no assistant turn"):
        split_last_turn({"messages": chat[:1]})


def test_dpo_prefers_the_chosen_answer(project, tmp_path):
    ctx = make_context(project, "dpo", "pairs", tmp_path, max_steps=15, learning_rate=1e-3)
    metrics, log = run_stage(ctx)
    losses = values(log, "loss")
    assert losses[-1] < 0.5 * losses[0], losses
    assert values(log, "rewards/accuracies")[-1] == 1.0
    assert metrics["trainable_parameters"] > 0


def test_dpo_reference_is_a_separate_frozen_model_without_hooks(project, tmp_path):
    from barctl.model.freezing import apply_trainable
    from barctl.training import common, dpo

    ctx = make_context(project, "dpo", "pairs", tmp_path)
    model, tokenizer = common.load_model(project / "moe")
    apply_trainable(model, ["all"])
    trainer = dpo.build_trainer(ctx.config, model, tokenizer, common.stage_dataset(ctx.recipe, ctx.config["mix"]),
                                tmp_path / "trainer")
    assert trainer.ref_model is not None and trainer.ref_model is not model
    assert not any(param._post_accumulate_grad_hooks for param in trainer.ref_model.parameters())
    optimised = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in trainer.ref_model.parameters()}
    assert model.model.layers[0].mlp.experts.down_proj._post_accumulate_grad_hooks  # the policy has them


def test_grpo_raises_the_reward(project, tmp_path):
    rewards = [{"name": "tests.test_stages:letter_a_reward", "weight": 1.0}]
    ctx = make_context(project, "grpo", "prompts", tmp_path, rewards=rewards, max_steps=20, batch_size=8,
                       max_length=8, learning_rate=3e-2, trl={"num_generations": 4})
    metrics, log = run_stage(ctx)
    rewards_seen = values(log, "reward")
    first, last = sum(rewards_seen[:3]) / 3, sum(rewards_seen[-3:]) / 3
    assert last > first + 0.2, [round(r, 3) for r in rewards_seen]
    assert metrics["reward"] == rewards_seen[-1] and metrics["steps"] == 20 and metrics["tokens"] > 0


def test_unknown_or_owned_trl_fields_are_refused_with_suggestions(tmp_path):
    from trl import GRPOConfig, SFTConfig

    from barctl.training.common import trl_config

    unknown = r"'num_train_epoch': SFTConfig has no such field \(did you mean 'num_train_epochs'"
    with pytest.raises(BarctlError, match=unknown):
        trl_config(SFTConfig, {"trl": {"num_train_epoch": 1}}, tmp_path)
    with pytest.raises(BarctlError, match="set it as training.learning_rate"):
        trl_config(SFTConfig, {"trl": {"learning_rate": 1.0}}, tmp_path)
    args = trl_config(SFTConfig, {"epochs": 2, "batch_size": 3, "warmup_ratio": 0.1, "precision": "bf16",
                                  "trl": {"packing": True}}, tmp_path, defaults={"packing": False})
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.warmup_steps) == (2, 3, 0.1)
    assert args.packing and args.use_cpu and not args.bf16 and not args.gradient_checkpointing
    assert args.report_to == [] and args.output_dir == str(tmp_path)
    with pytest.raises(BarctlError, match="GRPOConfig rejects these settings: generation_batch_size"):
        trl_config(GRPOConfig, {"batch_size": 3, "trl": {"num_generations": 4}}, tmp_path)


class Kill(TrainerCallback):
    """Raises when step `at` is about to start, after checkpoint-`at` was saved: an apply killed mid-stage."""

    def __init__(self, at: int):
        self.at = at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


class FirstStep(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


def test_a_killed_stage_resumes_from_its_last_checkpoint(project, tmp_path):
    messages = []
    ctx = make_context(project, "midtrain", "text", tmp_path, messages=messages, max_steps=6, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run_stage(ctx, Kill(at=4))
    assert sorted(p.name for p in (ctx.work / "trainer").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    first = FirstStep()
    metrics, _ = run_stage(ctx, first)
    assert "resuming from checkpoint-4" in messages
    assert first.step == 4 and metrics["steps"] == 6
    assert not any(ctx.work.iterdir())


def test_checkpoints_of_another_configuration_are_discarded(tmp_path):
    from barctl.training.common import prepare_work

    messages = []
    (tmp_path / "trainer" / "checkpoint-2").mkdir(parents=True)
    prepare_work(tmp_path, "old-key", messages.append)
    assert not (tmp_path / "trainer").exists() and "discarding" in messages[0]
    (tmp_path / "trainer" / "checkpoint-2").mkdir(parents=True)
    prepare_work(tmp_path, "old-key", messages.append)
    assert (tmp_path / "trainer" / "checkpoint-2").exists() and len(messages) == 1

