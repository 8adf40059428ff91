"""`router` (and `btx.router`): the merged model's router weights, initialised and, when declared, trained.

The artifact holds `router.safetensors` (the router the export uses) and, when the router
was trained, `router-init.safetensors` (where training started).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from barctl.runners import NodeContext

ROUTER_FILE = "router.safetensors"
INIT_FILE = "router-init.safetensors"
# Rows this alike (cosine, averaged over layers) route every token almost the same way.
DEGENERATE_COSINE = 0.99


def run(ctx: NodeContext) -> dict[str, Any]:
    import torch

    from barctl.model.router_weights import row_cosines

    train = ctx.config["train"]
    init_file = ctx.out / (INIT_FILE if train is not None else ROUTER_FILE)
    initialise(ctx, init_file)
    slots = ["anchor", *(e.name for e in ctx.recipe.experts)]
    cosines = row_cosines(init_file)
    alike = [(slots[i], slots[j], float(cosines[i, j])) for i in range(len(slots)) for j in range(i + 1, len(slots))
             if cosines[i, j] > DEGENERATE_COSINE]
    if alike:
        pairs = ", ".join(f"{a} and {b} ({cosine:.4f})" for a, b, cosine in alike)
        ctx.say(f"warning: router rows nearly identical (cosine): {pairs}; routing would barely tell them apart"
                + ("" if train else ": consider routing.train"))
    off_diagonal = cosines - 2 * torch.eye(len(slots))
    metrics: dict[str, Any] = {"init": ctx.config["init"], "max_row_cosine": round(float(off_diagonal.max()), 6)}
    if train is not None:
        metrics.update(train_router(ctx, init_file, ctx.out / ROUTER_FILE))
    return metrics


def initialise(ctx: NodeContext, out_file: Path) -> None:
    from barctl.model.router_weights import extract_router, hidden_state_router, random_router

    merged, init = ctx.inputs[ctx.node.inputs[0]], ctx.config["init"]
    if init == "random":
        random_router(merged, out_file, ctx.config["seed"])
    elif init == "experts":
        extract_router(merged, out_file)
    else:
        anchor = ctx.inputs["base"] / "anchor"
        ctx.say(f"router init from the anchor's hidden states ({init})")
        hidden_state_router(anchor, init_texts(ctx, anchor), merged, out_file)


def init_texts(ctx: NodeContext, anchor: Path) -> list[list[str]]:
    """Per expert, the texts whose hidden states make its router row."""
    from transformers import AutoTokenizer

    from barctl.data.row_text import chat_text
    from barctl.training.router_training import expert_texts

    recipe, config = ctx.recipe, ctx.config
    tokenizer = AutoTokenizer.from_pretrained(anchor)
    if config["init"] == "prompts":
        return [[chat_text(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True)
                 for p in config["prompts"][expert.name]] for expert in recipe.experts]
    return [expert_texts(recipe, expert, tokenizer, config["init_samples"], config["seed"])
            for expert in recipe.experts]


def load_for_router_training(merged: Path, training: dict[str, Any]):
    """The merged model for router training: on a GPU in the training precision (bf16 halves a 5x7B's 98 GB)
    and spread over every visible GPU; on the CPU in fp32, as every stage there."""
    from barctl.training import common

    precision = training.get("precision", "fp32")
    dtype = common.DTYPES["fp32" if common.on_cpu() else precision]
    return common.load_model(merged, dtype, experts_implementation=training.get("experts_implementation"),
                             device_map=common.placement())


def train_router(ctx: NodeContext, init_file: Path, out_file: Path) -> dict[str, Any]:
    from barctl.engine.graph import resolved_top_k
    from barctl.model.freezing import apply_trainable
    from barctl.model.router_weights import load_router, save_router
    from barctl.training import common, router_training

    train, merged = ctx.config["train"], ctx.inputs[ctx.node.inputs[0]]
    model, tokenizer = load_for_router_training(merged, train["training"])
    load_router(model, init_file)
    counts = apply_trainable(model, ["router"], freeze_anchor_row=False)
    common.trainable_in_fp32(model)
    if train["aux_loss_weight"] > 0 and resolved_top_k(ctx.recipe) == len(ctx.recipe.experts) + 1:
        ctx.say("note: with every expert active (top_k all) the balancing loss is constant; it does not train")
    sample, rows = router_training.routing_sample(ctx.recipe, train["fraction"], ctx.config["seed"])
    ctx.say("router training sample: " + ", ".join(f"{name} {n}" for name, n in rows.items()) + " rows")
    unsampled = [name for name, n in rows.items() if n == 0]
    if unsampled:
        ctx.say(f"warning: router training has no rows from {', '.join(unsampled)} (no sft stage with data): "
                "those experts' router rows only learn to lose the other domains' tokens")
    started = time.monotonic()
    work = common.prepare_work(ctx.work, ctx.node.key, ctx.say)
    state = router_training.train_router(model, tokenizer, sample, train, work, ctx.say, note=ctx.note)
    save_router(model, merged, out_file)
    common.clear(ctx.work)
    logged = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return {"train_loss": logged[-1] if logged else None, "sample_rows": rows, "steps": state.global_step,
            "tokens": state.num_input_tokens_seen, "train_seconds": round(time.monotonic() - started, 2),
            "trainable_parameters": counts["router"]}
