"""How much memory a node needs at its peak, from the config alone (no weights loaded), and how much it can see.

Training (a stage of a branched expert, router training of the merged model), per process:
- weights: every parameter, 4 bytes (barctl loads fp32 and runs bf16/fp16 as autocast), or
  2 bytes under DeepSpeed bf16/fp16 (it casts the module) and for router training in bf16
  on a GPU (the frozen model in bf16, the router in fp32);
- gradients and AdamW state for the tensors that train: a fused expert tensor or a router
  weight gets a gradient and two moments over all its slots, the anchor's included.
  Without DeepSpeed: 4 + 8 bytes per element. Under DeepSpeed bf16/fp16, the ZeRO paper's
  accounting (Rajbhandari et al. 2020): 2 bytes of gradient and 12 of optimiser state (fp32
  master, two moments), the optimiser state split over the ranks from ZeRO-1, the gradients
  from ZeRO-2, the weights from ZeRO-3;
- activations of one micro-batch (`batch_size` sequences of `max_length` tokens; a DPO row
  is two, a GRPO completion assumes GRPO_PROMPT prompt tokens before it): per token and
  layer the tensors backward keeps of a SwiGLU MoE layer, 6h + 2kv + k(2h + 4i) values
  (norm inputs and outputs, q/k/v, attention output, and for each of the k active experts its
  input, gate, up, activation and product), only the layer inputs plus one layer when
  activation checkpointing is on (barctl's default on a GPU); and the logits, in the
  activation dtype plus an fp32 copy for the loss and its fp32 gradient. GRPO also generates:
  its KV cache for the micro-batch counts when larger. DPO adds its reference model's weights.
Evaluation: the weights in the evaluation dtype, plus the largest of the generation KV cache
(batch x (max_length + max_new_tokens) tokens, in the model's dtype) and a scoring forward's
logits (the loss metric, the routing report).

These are estimates: allocator fragmentation, CUDA context (about 0.5-1 GB) and library
buffers come on top. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from barctl.engine.cost import GRPO_COMPLETION, TRL_DEFAULTS
from barctl.manifest.recipe import Recipe
from barctl.model.freezing import expand, group_sizes, trainable_parameter_count

GRPO_PROMPT = 512  # prompt tokens assumed before each GRPO completion (TRL no longer caps prompts)
GIB = 1 << 30


@dataclass(frozen=True)
class Visible:
    """The memory a node can use: `devices` GPUs of `per_device` bytes each, or host RAM (devices 0)."""

    devices: int
    per_device: int

    @property
    def gpu(self) -> bool:
        return self.devices > 0

    def describe(self) -> str:
        if self.gpu:
            return f"{self.devices} GPU(s) of {self.per_device / GIB:.1f} GiB"
        return f"{self.per_device / GIB:.1f} GiB of host memory"


def visible_memory() -> Visible:
    """GPU memory per device when CUDA devices are visible (nvidia-smi, respecting CUDA_VISIBLE_DEVICES),
    else the host's RAM. torch is not imported: plan stays fast."""
    gpus = _gpu_memory()
    if gpus:
        return Visible(len(gpus), min(gpus))
    return Visible(0, _host_memory())


def _gpu_memory() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return []
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",")]
        rows = [row for row in rows if row[0] in wanted or row[1] in wanted]
    return [int(float(row[2])) << 20 for row in rows]  # MiB


def _host_memory() -> int:
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(psutil.virtual_memory().total)


def total_parameters(config: Mapping) -> int:
    """Every parameter of a barctl MoE with this config.json (all expert slots, a tied head counted once)."""
    sizes = group_sizes(config)
    return sum(sizes.values()) + _slot0_ffn(config)


def dense_parameters(moe_config: Mapping) -> int:
    """Parameters of the dense model a 1-expert MoE config was made from (no router)."""
    return total_parameters(moe_config) - int(moe_config["num_hidden_layers"]) * int(moe_config["hidden_size"])


def _slot0_ffn(config: Mapping) -> int:
    return int(config["num_hidden_layers"]) * 3 * int(config["hidden_size"]) * int(config["intermediate_size"])


def gradient_elements(config: Mapping, groups: list[str], *, freeze_anchor_row: bool = True) -> int:
    """Elements of the tensors that get a gradient: the trainable parameters plus the anchor's slot and
    router row, which share their tensors with trainable slots."""
    chosen = expand(groups)
    count = trainable_parameter_count(config, groups, freeze_anchor_row=freeze_anchor_row)
    if "expert" in chosen:
        count += _slot0_ffn(config)
    if "router" in chosen and freeze_anchor_row:
        count += int(config["num_hidden_layers"]) * int(config["hidden_size"])
    return count


def kv_cache_bytes(config: Mapping, sequences: int, tokens: int, dtype_bytes: int) -> int:
    """Keys and values of every layer for `sequences` x `tokens` positions."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    return 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * sequences * tokens * dtype_bytes


def activation_bytes(config: Mapping, sequences: int, length: int, dtype_bytes: int, *,
                     checkpointing: bool) -> int:
    """What backward keeps of one micro-batch: the layers' saved tensors and the logits (see the module doc)."""
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads) * int(config.get("head_dim") or hidden // heads)
    layers, active = int(config["num_hidden_layers"]), int(config.get("num_experts_per_tok") or 1)
    tokens = sequences * length
    per_layer = 6 * hidden + 2 * kv + active * (2 * hidden + 4 * inter)
    stored = layers * hidden + per_layer if checkpointing else layers * per_layer
    logits = tokens * int(config["vocab_size"]) * (dtype_bytes + 8)
    return tokens * stored * dtype_bytes + logits


def training_memory(config: Mapping, groups: list[str], kind: str, training: Mapping[str, Any], *,
                    gpu: bool, zero_stage: int = 0, ranks: int = 1, freeze_anchor_row: bool = True,
                    low_precision_frozen: bool = False) -> dict[str, int]:
    """Peak bytes of one training process, by part (see the module doc), and their `total`.

    `zero_stage` 0 means no DeepSpeed; `ranks` is the number of processes ZeRO splits over.
    `low_precision_frozen`: the frozen parameters are held in bf16/fp16 (router training on a GPU).
    """
    settings = {**TRL_DEFAULTS, **{k: v for k, v in training.items() if v is not None}}
    trl = training.get("trl") or {}
    half = gpu and settings.get("precision", "fp32") in ("bf16", "fp16")
    act_bytes = 2 if half else 4
    params = total_parameters(config)
    trained = gradient_elements(config, groups, freeze_anchor_row=freeze_anchor_row)
    if zero_stage:
        weight_bytes, grad_bytes, optim_bytes = (2, 2, 12) if half else (4, 4, 8)
        weights = params * weight_bytes // (ranks if zero_stage >= 3 else 1)
        gradients = trained * grad_bytes // (ranks if zero_stage >= 2 else 1)
        optimizer = trained * optim_bytes // ranks
    else:
        frozen_bytes = 2 if low_precision_frozen and half else 4
        weights = (params - trained) * frozen_bytes + trained * 4
        gradients, optimizer = trained * 4, trained * 8
    checkpointing = bool(trl.get("gradient_checkpointing", trl.get("activation_checkpointing", gpu)))
    batch = int(settings["batch_size"])
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer}
    if kind == "grpo":
        length = GRPO_PROMPT + int(trl.get("max_completion_length") or training.get("max_length") or GRPO_COMPLETION)
        train_acts = activation_bytes(config, batch, length, act_bytes, checkpointing=checkpointing)
        weight_dtype = 2 if zero_stage and half else 4
        parts["activations"] = max(train_acts, kv_cache_bytes(config, batch, length, weight_dtype))
    else:
        sequences = batch * (2 if kind == "dpo" else 1)
        parts["activations"] = activation_bytes(config, sequences, int(settings["max_length"]), act_bytes,
                                                checkpointing=checkpointing)
    if kind == "dpo" and float(trl.get("beta", 0.1)) != 0:
        parts["reference"] = params * (2 if zero_stage and half else 4)
    return {**parts, "total": sum(parts.values())}


def eval_memory(config: Mapping, domains: Mapping[str, Mapping[str, Any]], dtype_bytes: int,
                parameters: int | None = None) -> dict[str, int]:
    """Peak bytes of an evaluation: weights, and the largest working set of its domains (see the module doc)."""
    weights = (total_parameters(config) if parameters is None else parameters) * dtype_bytes
    working = 0
    for spec in domains.values():
        limits = spec["generation"]
        batch, length = int(limits["batch_size"]), int(limits["max_length"])
        scoring = batch * length * int(config["vocab_size"]) * (dtype_bytes + 4)
        if spec["metric"] == "loss":
            working = max(working, scoring)
        else:
            cache = kv_cache_bytes(config, batch, length + int(limits["max_new_tokens"]), dtype_bytes)
            working = max(working, cache, scoring if spec.get("routing_report") else 0)
    return {"weights": weights, "kv_cache": working, "total": weights + working}


def zero_stage(recipe: Recipe, launcher: Mapping[str, Any]) -> int:
    """The ZeRO stage of a launcher's accelerate config (through its DeepSpeed config file); 0 without DeepSpeed."""
    if "config_file" not in launcher:
        return 0
    path = recipe.resolve(launcher["config_file"])
    config = _read(path)
    if str(config.get("distributed_type", "")).upper() != "DEEPSPEED":
        return 0
    deepspeed = config.get("deepspeed_config") or {}
    if "zero_stage" in deepspeed:
        return int(deepspeed["zero_stage"])
    file = deepspeed.get("deepspeed_config_file")
    if not file:
        return 0
    # accelerate resolves the DeepSpeed file from where it runs: barctl starts it in the manifest's directory
    return int((_read(recipe.resolve(file)).get("zero_optimization") or {}).get("stage", 0))


def _read(path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def plan_memory(recipe: Recipe, node_ids: list[str], visible: Visible) -> dict[str, dict[str, Any]]:
    """Estimated peak memory of every node among `node_ids` that loads a model: stages, router training,
    evaluations. `per` says what one estimate covers (a process, or the whole node across devices)."""
    from barctl.engine.graph import evaluated_models, resolved_top_k
    from barctl.model.families import family_for
    from barctl.model.source import describe

    dense = describe(recipe.resolve_source(recipe.anchor))
    family = family_for(dense, recipe.output["architecture"])
    branched = family.moe_config(dense, num_experts=2, top_k=2)
    merged = family.moe_config(dense, num_experts=len(recipe.experts) + 1, top_k=resolved_top_k(recipe))
    wanted, found = set(node_ids), {}
    for expert in recipe.experts:
        for stage in expert.stages:
            node_id = f"experts.{expert.name}.{stage.name}"
            if node_id in wanted:
                launcher = stage.launcher
                per_node = int(launcher.get("num_processes") or 1)
                ranks = per_node * int(launcher.get("num_machines") or 1)
                estimate = training_memory(branched, list(stage.trainable), stage.kind, stage.training,
                                           gpu=visible.gpu, zero_stage=zero_stage(recipe, launcher), ranks=ranks)
                found[node_id] = {**estimate, "per": "process", "processes": per_node}
    train = recipe.routing["train"]
    if train is not None and "router" in wanted:
        estimate = training_memory(merged, ["router"], "sft", train["training"], gpu=visible.gpu,
                                   freeze_anchor_row=False, low_precision_frozen=True)
        found["router"] = {**estimate, "per": "node", "processes": 1}
    if recipe.evals:
        dtype_bytes = 2 if recipe.evals.get("precision", "fp32") != "fp32" else 4
        report = recipe.evals.get("routing_report")
        one_expert = family.moe_config(dense, num_experts=1, top_k=1)
        for node_id, model in evaluated_models(recipe):
            if node_id not in wanted:
                continue
            if model == "anchor":
                config, params = one_expert, dense_parameters(one_expert)
            elif model in ("merged", *(f"experts.{e.name}" for e in recipe.experts)):
                config, params = (merged if model == "merged" else branched), None
            else:
                continue
            domains = {name: {**spec, "routing_report": bool(report) and model == "merged"}
                       for name, spec in recipe.evals["domains"].items()}
            found[node_id] = {**eval_memory(config, domains, dtype_bytes, params), "per": "node", "processes": 1}
    return found


def memory_warnings(recipe: Recipe, memory: Mapping[str, Mapping[str, Any]], visible: Visible) -> list[str]:
    """A located warning for every node whose estimate exceeds what it can see."""
    warnings = []
    for node_id, estimate in memory.items():
        need = needed_per_device(estimate, visible)
        if need > visible.per_device:
            where = _where(recipe, node_id)
            what = "per GPU" if visible.gpu else "of host memory"
            warnings.append(recipe.issue(where, f"{node_id} needs about {need / GIB:.1f} GiB {what} "
                                                f"({breakdown(estimate)}); this machine has {visible.describe()}")
                            .format(recipe.document.filename))
    return warnings


def needed_per_device(estimate: Mapping[str, Any], visible: Visible) -> int:
    """What one GPU (or the host) must hold: a process on its own GPU, a node's model spread over every GPU
    (barctl places router training and evaluations across them), every process of a node in host memory."""
    if not visible.gpu:
        return estimate["total"] * estimate["processes"]
    return estimate["total"] if estimate["per"] == "process" else -(-estimate["total"] // visible.devices)


def breakdown(estimate: Mapping[str, Any]) -> str:
    parts = [f"{name} {estimate[name] / GIB:.1f}" for name in
             ("weights", "gradients", "optimizer", "activations", "reference", "kv_cache") if estimate.get(name)]
    return " + ".join(parts) + " GiB"


def _where(recipe: Recipe, node_id: str) -> tuple:
    if node_id == "router":
        return ("routing", "train")
    if node_id.startswith("eval."):
        return ("evals",)
    _, name, stage_name = node_id.split(".", 2)
    expert = next(e for e in recipe.experts if e.name == name)
    index = next(i for i, s in enumerate(expert.stages) if s.name == stage_name)
    return ("experts", name, "stages", index)
