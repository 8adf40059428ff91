"""Training cost in the plan (tokens and FLOPs from the config alone) and in the lock (measured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from barctl.engine.cost import compute_parameters, mix_rows, training_tokens
from tests.projects import apply, barctl, make_project, tiny_manifest, write_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("tied", [True, False])
def test_active_parameters_of_a_two_slot_expert_are_the_model_without_its_embedding_lookup(tied):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from barctl.model.families import family_for
    from tests.helpers import TINY_CONFIG

    dense = LlamaConfig(**TINY_CONFIG, vocab_size=300, tie_word_embeddings=tied).to_dict()
    moe = family_for(dense, "auto").moe_config(dense, num_experts=2, top_k=2)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**moe), dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())  # a tied head is counted once, as the embedding
    lookup = 0 if tied else 300 * TINY_CONFIG["hidden_size"]
    assert compute_parameters(moe) == total - lookup


def test_top_k_counts_the_active_experts_only():
    from barctl.model.families import family_for
    from tests.helpers import TINY_CONFIG

    dense = {"model_type": "llama", "vocab_size": 300, **TINY_CONFIG}
    family = family_for(dense, "auto")
    ffn = 3 * TINY_CONFIG["hidden_size"] * TINY_CONFIG["intermediate_size"] * TINY_CONFIG["num_hidden_layers"]
    all_active = compute_parameters(family.moe_config(dense, num_experts=5, top_k=5))
    two_active = compute_parameters(family.moe_config(dense, num_experts=5, top_k=2))
    assert all_active - two_active == 3 * ffn


@pytest.mark.parametrize("kind, training, rows, tokens", [
    ("sft", {"max_steps": 3, "batch_size": 4, "max_length": 256}, None, 3 * 4 * 256),
    ("sft", {"max_steps": 3, "batch_size": 4, "gradient_accumulation": 2, "max_length": 256}, 10, 3 * 8 * 256),
    ("sft", {"epochs": 2, "max_length": 128}, 10, 2 * 10 * 128),
    ("sft", {}, 10, 3 * 10 * 1024),  # TRL's defaults: 3 epochs, max_length 1024
    ("dpo", {"max_steps": 2, "batch_size": 4, "max_length": 128}, None, 2 * 4 * 2 * 128),  # chosen and rejected
    ("grpo", {"max_steps": 2, "batch_size": 4, "max_length": 16}, None, 2 * 4 * 16),  # completions only
    ("grpo", {"epochs": 1, "max_length": 16, "trl": {"num_generations": 2}}, 8, 8 * 2 * 16),
    ("sft", {"epochs": 1}, None, None),  # a mix by fractions: unknown without the data
])
def test_training_tokens_from_the_settings(kind, training, rows, tokens):
    assert training_tokens(kind, training, rows) == tokens


def test_mix_rows():
    assert mix_rows({"size": 20, "sources": [{"dataset": "a", "weight": 1}]}) == 20
    assert mix_rows({"sources": [{"dataset": "a", "count": 3}, {"dataset": "b", "count": 4}]}) == 7
    assert mix_rows({"sources": [{"dataset": "a", "count": 3}, {"dataset": "b", "fraction": 0.5}]}) is None


CHATS = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                       {"role": "assistant", "content": f"The answer is {a + b}."}]} for a in range(4) for b in range(3)]
TRAINING = {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 2, "max_length": 64}
EXPERTS = ("math", "code", "tools")


def costed_project(root: Path, tokenizer_dir: Path, learning_rate: float = 1e-3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 8}]},
             "training": {**TRAINING, "learning_rate": learning_rate}}
    manifest = tiny_manifest({name: {"stages": [stage]} for name in EXPERTS},
                             datasets={"chat": {"path": "chat.jsonl", "format": "messages"}},
                             routing={"train": {"fraction": 0.5, "training": TRAINING}})
    return make_project(root, tokenizer_dir, manifest)


def plan_costs(manifest: Path) -> tuple[dict, dict]:
    result = barctl("plan", manifest, "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    return plan["costs"], plan["cost_total"]


def test_plan_shows_costs_and_updating_one_expert_costs_one_share(tmp_path, tokenizer_dir):
    manifest = costed_project(tmp_path, tokenizer_dir)
    costs, cost_total = plan_costs(manifest)
    stages = [f"experts.{name}.sft" for name in EXPERTS]
    assert set(costs) == {*stages, "router"}
    assert all(costs[s]["tokens"] == 2 * 2 * 64 for s in stages)
    assert costs["router"]["compute_parameters"] > costs[stages[0]]["compute_parameters"]  # 4 slots active, not 2
    assert cost_total["tokens"] == sum(c["tokens"] for c in costs.values())
    assert cost_total["flops"] == pytest.approx(sum(6 * c["compute_parameters"] * c["tokens"] for c in costs.values()))
    text = barctl("plan", manifest).output
    assert "# at most 256 tokens" in text and "active parameters per token" in text
    assert f"Training: at most {cost_total['tokens']:,} tokens" in text

    apply(manifest)
    entries = json.loads(barctl("show", manifest, "--json").output)
    for stage in stages:  # measured: tokens, and training seconds apart from the node's wall time
        metrics = entries[stage]["metrics"]
        assert metrics["tokens"] > 0 and 0 < metrics["train_seconds"] <= metrics["seconds"], metrics
    assert plan_costs(manifest) == ({}, {"tokens": 0, "flops": 0, "unknown": []})

    write_manifest(manifest, _with_math_learning_rate(manifest, 2e-3))
    costs_after, total_after = plan_costs(manifest)
    assert set(costs_after) == {"experts.math.sft", "router"}  # one of three experts, plus the cheap router
    expert_tokens = sum(costs[s]["tokens"] for s in stages)
    assert costs_after["experts.math.sft"]["tokens"] == expert_tokens / len(EXPERTS)
    assert total_after["tokens"] == costs_after["experts.math.sft"]["tokens"] + costs["router"]["tokens"]


def _with_math_learning_rate(manifest: Path, learning_rate: float) -> dict:
    import yaml

    data = yaml.safe_load(manifest.read_text())
    data["experts"]["math"]["stages"][0]["training"]["learning_rate"] = learning_rate
    return data
