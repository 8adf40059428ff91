"""What a plan's training costs, from the config alone: tokens and FLOPs of every node that trains.

FLOPs are 6 x parameters that compute x tokens (forward 2, backward 4, per parameter and
token). In a MoE the parameters that compute are the *active* ones per token: attention,
norms, the router, the FFNs of the `top_k` experts each token is routed to, and the
output head (embedding lookups are not matrix products and do not count). A branched
expert in its stages has 2 slots, both active; the merged model under router training
has the anchor and every expert, `top_k` of them active.

Tokens are an upper bound from the settings: sequences (max_steps x batch x gradient
accumulation x processes, else the mix's rows x epochs) times the longest sequence
(`max_length`; a `midtrain` packs to exactly that). A DPO row is two sequences (chosen and
rejected; the reference model's forward passes are not counted). A GRPO sequence counts
its completion only (`max_completion_length`; prompts and generation are not counted).
Where the settings leave a value to TRL, its default is used (batch 8, 3 epochs,
max_length 1024, GRPO completions 256). A mix given by fractions needs the data's row
counts: without `max_steps` its tokens are unknown (None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from barctl.engine.baselines import btx_stage_id, retrain_stages
from barctl.manifest.recipe import Recipe
from barctl.model.freezing import group_sizes

TRL_DEFAULTS = {"batch_size": 8, "epochs": 3, "max_length": 1024, "gradient_accumulation": 1}
GRPO_COMPLETION = 256
SEQUENCES_PER_ROW = {"midtrain": 1, "sft": 1, "dpo": 2, "grpo": 1}


def compute_parameters(config: Mapping) -> int:
    """Parameters one token passes through in a barctl MoE with this config.json (its top_k experts active)."""
    sizes = group_sizes(config)
    layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    ffn = 3 * hidden * int(config["intermediate_size"])
    head = int(config["vocab_size"]) * hidden  # tied or not, the head is one matrix product per token
    return sizes["attention"] + sizes["norms"] + sizes["router"] + layers * int(config["num_experts_per_tok"]) * ffn \
        + head


def dense_parameters(branched: Mapping) -> tuple[int, int]:
    """(every parameter, parameters that compute per token) of the dense anchor a 2-slot expert's config.json
    was branched from: one FFN per layer, no router. The baselines' stages train such a model."""
    router = group_sizes(branched)["router"]
    every = sum(group_sizes(branched).values()) - router
    return every, compute_parameters({**branched, "num_experts_per_tok": 1}) - router


def mix_rows(mix: Mapping | None) -> int | None:
    """The rows a mix draws, when its config says: `size`, or counts only; None for fractions."""
    if mix is None:
        return 0
    if mix.get("size") is not None:
        return int(mix["size"])
    counts = [source.get("count") for source in mix["sources"]]
    return sum(counts) if all(c is not None for c in counts) else None


def training_tokens(kind: str, training: Mapping[str, Any], rows: int | None, processes: int = 1) -> int | None:
    """At most how many tokens a stage (or router training, kind `sft`) trains on; None when unknown."""
    settings = {**TRL_DEFAULTS, **{k: v for k, v in training.items() if v is not None}}
    trl = training.get("trl") or {}
    if kind == "grpo":
        length = trl.get("max_completion_length") or training.get("max_length") or GRPO_COMPLETION
        per_row = int(trl.get("num_generations", 4))  # barctl's default for GRPO
    else:
        length, per_row = settings["max_length"], SEQUENCES_PER_ROW[kind]
    if settings.get("max_steps"):
        batch = settings["batch_size"] * settings["gradient_accumulation"] * processes
        sequences = int(settings["max_steps"]) * batch * SEQUENCES_PER_ROW[kind]  # a GRPO batch is of completions
    elif rows is None:
        return None
    else:
        sequences = math.ceil(rows * float(settings["epochs"])) * per_row
    return sequences * int(length)


def flops(parameters: int, tokens: int | None) -> float | None:
    """6 x parameters that compute x tokens."""
    return None if tokens is None else 6.0 * parameters * tokens


def node_cost(kind: str, training: Mapping[str, Any], rows: int | None, parameters: int,
              processes: int = 1) -> dict[str, Any]:
    """One training node's estimate, as plan shows and saves it."""
    tokens = training_tokens(kind, training, rows, processes)
    return {"tokens": tokens, "compute_parameters": parameters, "flops": flops(parameters, tokens)}


def total(costs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sum of the nodes' tokens and FLOPs; `unknown` lists the nodes whose tokens cannot be told from the config."""
    known = [c for c in costs.values() if c["tokens"] is not None]
    return {"tokens": sum(c["tokens"] for c in known), "flops": sum(c["flops"] for c in known),
            "unknown": sorted(node for node, c in costs.items() if c["tokens"] is None)}


def plan_costs(recipe: Recipe, node_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The estimate of every node among `node_ids` that trains: the stages, router training, and the baselines'
    stages and router."""
    from barctl.engine.graph import resolved_top_k
    from barctl.model.families import family_for
    from barctl.model.source import describe

    dense = describe(recipe.resolve_source(recipe.anchor))
    family = family_for(dense, recipe.output["architecture"])
    branched = compute_parameters(family.moe_config(dense, num_experts=2, top_k=2))
    wanted, costs = set(node_ids), {}
    for expert in recipe.experts:
        for stage in expert.stages:
            node_id = f"experts.{expert.name}.{stage.name}"
            if node_id in wanted:
                processes = int(stage.launcher.get("num_processes") or 1)
                costs[node_id] = node_cost(stage.kind, stage.training, mix_rows(stage.mix), branched, processes)
    dense_compute = dense_parameters(family.moe_config(dense, num_experts=2, top_k=2))[1]
    for expert in recipe.experts:
        for stage in expert.stages:
            node_id = btx_stage_id(expert.name, stage.name)
            if node_id in wanted:
                costs[node_id] = node_cost(stage.kind, stage.training, mix_rows(stage.mix), dense_compute)
    for retrain in retrain_stages(recipe):
        if retrain.node_id in wanted:
            rows = [mix_rows(mix) for mix in retrain.mixes()]
            known = [r for r in rows if r is not None]
            costs[retrain.node_id] = node_cost(retrain.kind, retrain.training(),
                                               sum(known) if len(known) == len(rows) else None, dense_compute)
    train = recipe.routing["train"]
    merged = family.moe_config(dense, num_experts=len(recipe.experts) + 1, top_k=resolved_top_k(recipe))
    for router in ("router", "btx.router"):
        if train is not None and router in wanted:
            costs[router] = node_cost("sft", train["training"], _router_rows(recipe, train["fraction"]),
                                      compute_parameters(merged))
    return costs


def _router_rows(recipe: Recipe, fraction: float) -> int | None:
    """Rows of router training: `fraction` of each expert's SFT rows, at least one per expert that has some."""
    rows = 0
    for expert in recipe.experts:
        counts = [mix_rows(stage.mix) for stage in expert.stages if stage.kind == "sft" and stage.mix]
        known = [c for c in counts if c is not None]
        if len(known) < len(counts):
            return None
        if sum(known):
            rows += max(1, round(fraction * sum(known)))
    return rows
