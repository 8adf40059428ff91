"""`experts.<name>.<stage>`: one training stage (midtrain, sft, dpo, grpo) of a branched expert.

The trained checkpoint is saved in the input checkpoint's dtype, then its anchor slot is
compared bitwise with the input's, read back from both directories; a difference fails the stage.

The baselines' stages (`btx.experts.<name>.<stage>`, `retrain.<kind>`; config `dense: true`) train
a dense model, every parameter, in this process; a retrain stage reads several mixes (`mixes`).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from barctl.runners import NodeContext, model_dir


def run(ctx: NodeContext, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train in this process, or through `accelerate launch` when the stage declares it."""
    from barctl.training.launch import run_with_accelerate, stage_launcher

    if ctx.config.get("dense"):
        return train_stage(ctx, callbacks)
    launcher = stage_launcher(ctx.recipe, ctx.node.id)
    if launcher["kind"] == "accelerate":
        return run_with_accelerate(ctx, launcher)
    return train_stage(ctx, callbacks)


def train_stage(ctx: NodeContext, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train, save to `ctx.out`, verify the anchor slot. `callbacks`: extra TrainerCallbacks."""
    from barctl.model.checkpoint import CheckpointReader
    from barctl.model.freezing import AnchorGuard, apply_trainable, check_anchor_slot, tied_note
    from barctl.training import common

    config = ctx.config
    dense = bool(config.get("dense"))
    kind = importlib.import_module(f"barctl.training.{config['kind']}")
    input_dir = model_dir(ctx, ctx.node.inputs[0])
    model, tokenizer = common.load_model(input_dir,
                                         experts_implementation=config["training"].get("experts_implementation"))
    if dense:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        counts = {"all": sum(p.numel() for p in model.parameters())}
    else:
        note = tied_note(model.config.to_dict(), config["trainable"])
        if note:
            ctx.say(note)
        counts = apply_trainable(model, config["trainable"])
    if common.on_cpu() and config["training"].get("precision", "fp32") != "fp32":
        ctx.say("no GPU: training in fp32 on the CPU")
    if config["kind"] == "grpo":  # a reward's judge model, at its absolute path
        config = {**config, "rewards": [{**r, "judge": ctx.recipe.resolve_judge(r)} for r in config["rewards"]]}
    output_dir = common.prepare_work(ctx.work, ctx.node.key, ctx.say)
    trainer = _trainer(ctx, config, kind, model, tokenizer, input_dir, output_dir)
    guard = () if dense else (common.RestoreAnchor(AnchorGuard(model)),)
    for callback in (*guard, common.Progress(ctx.say, kind.METRIC, ctx.note), *callbacks):
        trainer.add_callback(callback)

    started = time.monotonic()
    common.train(trainer, ctx.say)
    seconds = time.monotonic() - started

    with CheckpointReader(input_dir) as reader:
        dtype = reader.dtype_of(reader.names()[0])
    # Under DeepSpeed every rank takes part in gathering the weights (ZeRO-3 partitions them).
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.is_deepspeed_enabled else None
    if trainer.accelerator.is_main_process:  # under `accelerate launch`, one process saves
        trained = trainer.accelerator.unwrap_model(trainer.model)
        common.stop_router_logits(trained)
        if weights is None:
            trained.to(dtype).save_pretrained(ctx.out)
        else:
            trained.save_pretrained(ctx.out, state_dict={name: t.to(dtype) for name, t in weights.items()})
        tokenizer.save_pretrained(ctx.out)
        if not dense:
            check_anchor_slot(ctx.out, input_dir)
        common.clear(ctx.work)

    state = trainer.state
    logged = [entry[kind.METRIC] for entry in state.log_history if kind.METRIC in entry]
    return {
        "reward" if kind.METRIC == "reward" else "train_loss": logged[-1] if logged else None,
        "steps": state.global_step,
        "tokens": state.num_input_tokens_seen,
        "train_seconds": round(seconds, 2),  # trainer.train() alone; apply records the node's wall time as seconds
        "trainable_parameters": sum(counts.values()),
    }


def _trainer(ctx: NodeContext, config: dict[str, Any], kind: Any, model: Any, tokenizer: Any, input_dir: Path,
             output_dir: Path) -> Any:
    """The kind's trainer, on the stage's data as TRL prepared it before when the tokenised cache holds it
    (sft, midtrain: barctl.training.tokenized); a fresh preparation is stored for the next build."""
    from barctl.engine.store import Store
    from barctl.training import common, tokenized

    cache = None
    if config["kind"] in tokenized.KINDS:
        key = tokenized.cache_key(config, ctx.node.data, input_dir)
        cache = tokenized.TokenizedCache(Store(ctx.recipe.root).tokenized, key)
    prepared = cache.load() if cache is not None else None
    common.wait_for_ranks()  # every rank has looked before the main one writes
    if prepared is not None:
        ctx.say("the tokenised data comes from the cache")
        return kind.build_trainer(config, model, tokenizer, prepared, output_dir, prepared=True)
    dataset = common.union_dataset(ctx.recipe, list(config["mixes"].values()), config["training"]["seed"]) \
        if "mixes" in config else common.stage_dataset(ctx.recipe, config["mix"])
    trainer = kind.build_trainer(config, model, tokenizer, dataset, output_dir)
    if cache is not None and trainer.accelerator.is_main_process:
        cache.save(trainer.train_dataset)
    return trainer
