"""barctl.engine.memory: peak-memory estimates from the config alone, checked against hand-computed values at the
OLMo 2 7B shape and against what a tiny model really allocates."""

from __future__ import annotations

from barctl.engine.memory import (
    Visible,
    activation_bytes,
    dense_parameters,
    eval_memory,
    kv_cache_bytes,
    needed_per_device,
    total_parameters,
    training_memory,
)
from barctl.model.families import FLEX_OLMO
from tests.test_recipe_olmo2 import OLMO2_7B_CONFIG

BRANCHED = FLEX_OLMO.moe_config(OLMO2_7B_CONFIG, num_experts=2, top_k=2)
MERGED = FLEX_OLMO.moe_config(OLMO2_7B_CONFIG, num_experts=5, top_k=5)
ONE = FLEX_OLMO.moe_config(OLMO2_7B_CONFIG, num_experts=1, top_k=1)

# Per layer, by hand: attention 4 x 4096^2 + q/k norms 2 x 4096 = 67,117,056; one FFN 3 x 4096 x 11,008 =
# 135,266,304; router E x 4096. Over 32 layers, plus 65 norms of 4096 and two 100,352 x 4096 matrices.
ATTENTION, FFN, NORMS, MATRICES = 32 * 67_117_056, 32 * 135_266_304, 65 * 4096, 2 * 100_352 * 4096


def test_parameter_counts_at_the_7b_shape():
    assert dense_parameters(ONE) == ATTENTION + FFN + NORMS + MATRICES == 7_298_617_344  # OLMo 2 7B: 7.30B
    assert total_parameters(BRANCHED) == ATTENTION + 2 * FFN + NORMS + MATRICES + 32 * 2 * 4096 == 11_627_401_216
    assert total_parameters(MERGED) == 24_613_359_616  # the 98.5 GB in fp32


def test_kv_cache_of_the_7b_evaluation():
    # 2 (k, v) x 32 layers x 32 heads x 128 dims x 16 rows x (2,048 + 512) tokens x 4 bytes: the 43 GB
    assert kv_cache_bytes(MERGED, 16, 2560, 4) == 42_949_672_960
    assert kv_cache_bytes(MERGED, 16, 2560, 2) == 21_474_836_480


def test_merged_evaluation_in_bf16():
    domain = {"metric": "math_answer", "generation": {"batch_size": 16, "max_length": 2048, "max_new_tokens": 512},
              "routing_report": True}
    estimate = eval_memory(MERGED, {"math": domain}, 2)
    # the routing report's forward: 16 x 2,048 tokens x 100,352 logits x (2 + 4) bytes = 19.7 GB < the KV cache
    assert estimate == {"weights": 2 * 24_613_359_616, "kv_cache": 21_474_836_480,
                        "total": 2 * 24_613_359_616 + 21_474_836_480}
    loss = {**domain, "metric": "loss", "routing_report": False}
    assert eval_memory(MERGED, {"loss": loss}, 4)["kv_cache"] == 16 * 2048 * 100_352 * 8


def test_grpo_under_zero2_on_8_gpus():
    training = {"batch_size": 4, "max_length": 2048, "precision": "bf16", "trl": {"num_generations": 8}}
    estimate = training_memory(BRANCHED, ["all"], "grpo", training, gpu=True, zero_stage=2, ranks=8)
    params = 11_627_401_216  # every tensor trains (the anchor's slot gets a gradient too; it is zeroed)
    # activations: 4 completions of 512 + 2,048 tokens = 10,240 tokens; per token, 32 layer inputs of 4,096 plus
    # one recomputed layer of 6 x 4096 + 2 x 4096 + 2 x (2 x 4096 + 4 x 11,008) = 137,216 values, in bf16;
    # logits 10,240 x 100,352 x (2 + 8) bytes
    activations = 10_240 * (32 * 4096 + 137_216) * 2 + 10_240 * 100_352 * 10
    assert estimate == {"weights": 2 * params, "gradients": 2 * params // 8, "optimizer": 12 * params // 8,
                        "activations": activations, "total": 59_373_337_600}
    assert needed_per_device({**estimate, "per": "process", "processes": 8}, Visible(8, 80 << 30)) < 80 << 30


def test_router_training_in_bf16_keeps_the_frozen_model_in_bf16():
    training = {"batch_size": 2, "max_length": 4096, "precision": "bf16"}
    estimate = training_memory(MERGED, ["router"], "sft", training, gpu=True, freeze_anchor_row=False,
                               low_precision_frozen=True)
    router = 32 * 5 * 4096
    assert estimate["weights"] == (24_613_359_616 - router) * 2 + router * 4
    assert (estimate["gradients"], estimate["optimizer"]) == (router * 4, router * 8)
    assert estimate["activations"] == 8192 * (32 * 4096 + 6 * 4096 + 2 * 4096 + 5 * 52_224) * 2 + 8192 * 100_352 * 10
    on_cpu = training_memory(MERGED, ["router"], "sft", training, gpu=False, freeze_anchor_row=False,
                             low_precision_frozen=True)
    assert on_cpu["weights"] == 24_613_359_616 * 4  # the CPU trains in fp32


def test_expert_stage_gradients_cover_the_anchor_slot():
    training = {"batch_size": 1, "max_length": 8}
    estimate = training_memory(BRANCHED, ["expert"], "sft", training, gpu=False)
    assert estimate["gradients"] == 2 * FFN * 4  # both slots of the fused tensors
    assert estimate["optimizer"] == 2 * FFN * 8


def test_dpo_counts_two_sequences_and_its_reference():
    training = {"batch_size": 2, "max_length": 16}
    dpo = training_memory(BRANCHED, ["expert"], "dpo", training, gpu=False)
    sft = training_memory(BRANCHED, ["expert"], "sft", training, gpu=False)
    assert dpo["activations"] == activation_bytes(BRANCHED, 4, 16, 4, checkpointing=False) == 2 * sft["activations"]
    assert dpo["reference"] == total_parameters(BRANCHED) * 4
    assert "reference" not in training_memory(BRANCHED, ["expert"], "dpo", {**training, "trl": {"beta": 0}},
                                              gpu=False)


def test_host_memory_holds_every_process_of_a_node():
    estimate = {"total": 10 << 30, "per": "process", "processes": 4}
    assert needed_per_device(estimate, Visible(0, 64 << 30)) == 40 << 30
    assert needed_per_device(estimate, Visible(4, 80 << 30)) == 10 << 30
    spread = {"total": 100 << 30, "per": "node", "processes": 1}
    assert needed_per_device(spread, Visible(4, 80 << 30)) == 25 << 30


def test_estimate_bounds_a_tiny_models_real_allocations(tmp_path, tokenizer_dir):
    """Weights, gradients and AdamW state exactly as allocated after a step; the estimated activations within a
    factor of two of the bytes autograd really saves for backward."""
    import torch
    from transformers import AutoModelForCausalLM

    from barctl.model.freezing import apply_trainable
    from barctl.model.upcycle import branch
    from tests.helpers import make_dense_checkpoint

    anchor = make_dense_checkpoint(tmp_path / "anchor", tokenizer_dir=tokenizer_dir, hidden_size=64,
                                   intermediate_size=256, num_hidden_layers=4)
    branch(anchor, tmp_path / "expert", ffn_dir=None, seed=0, max_shard_bytes=1 << 30)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "expert", dtype=torch.float32)
    groups = ["expert", "router"]
    apply_trainable(model, groups)
    config = model.config.to_dict()
    batch, length = 4, 64
    estimate = training_memory(config, groups, "sft", {"batch_size": batch, "max_length": length}, gpu=False)

    ids = torch.randint(0, config["vocab_size"], (batch, length))
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    parameters = {p.data_ptr() for p in model.parameters()}
    activations = sum(size for ptr, size in saved.items() if ptr not in parameters)
    loss.backward()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    optimizer.step()

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    assert estimate["weights"] == nbytes({p.data_ptr(): p for p in model.parameters()}.values())
    assert estimate["gradients"] == nbytes(p.grad for p in model.parameters() if p.grad is not None)
    assert estimate["optimizer"] == nbytes(t for s in optimizer.state.values() for t in s.values() if t.dim())
    assert activations / 2 <= estimate["activations"] <= activations * 2, (estimate["activations"], activations)




def test_plan_shows_each_nodes_memory_and_warns_where_it_does_not_fit(tmp_path, tokenizer_dir, monkeypatch):
    import json

    import yaml

    from barctl.engine import memory
    from tests.projects import barctl, write_manifest
    from tests.test_cost import costed_project

    manifest = costed_project(tmp_path, tokenizer_dir)
    data = yaml.safe_load(manifest.read_text())
    data["evals"] = {"models": ["merged"], "precision": "bf16",
                     "domains": {"math": {"dataset": "chat", "metric": "loss", "generation": {"max_length": 64}}}}
    write_manifest(manifest, data)
    monkeypatch.setattr(memory, "_gpu_memory", lambda: [])
    monkeypatch.setattr(memory, "_host_memory", lambda: 64 << 30)
    plan = json.loads(barctl("plan", manifest, "--json").output)
    stages = [f"experts.{name}.sft" for name in ("math", "code", "tools")]
    estimates = plan["memory"]
    assert set(estimates) == {*stages, "router", "eval.merged"}
    assert all(estimates[s]["per"] == "process" and estimates[s]["total"] > 0 for s in stages)
    assert estimates["router"]["gradients"] == 2 * 4 * 32 * 4  # 2 layers x 4 slots x hidden 32, fp32
    assert estimates["eval.merged"]["weights"] == estimates["router"]["weights"] // 2  # bf16, the router's fp32
    assert not [w for w in plan["warnings"] if "needs about" in w]
    assert barctl("plan", manifest).output.count("# peak memory about") == 5

    monkeypatch.setattr(memory, "_host_memory", lambda: 1 << 20)
    result = barctl("plan", manifest)
    assert result.exit_code == 0
    warned = [line for line in result.output.splitlines() if "needs about" in line]
    assert len(warned) == 5
    assert any("bar.yaml:" in line and "experts.math.sft needs about" in line and "of host memory" in line
               for line in warned)
    assert any("router needs about" in line for line in warned)
