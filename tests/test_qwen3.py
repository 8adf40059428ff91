"""Qwen3 anchors become Qwen3-MoE (`qwen3_moe`) exactly; Qwen2 anchors are refused, saying why."""

import json

import pytest
import torch

from barctl.errors import UnsupportedModel
from barctl.model.checkpoint import CheckpointReader
from barctl.model.expert_merge import merge
from barctl.model.families import PROJS, QWEN3_MOE, family_for, moe_family_for_moe_config
from barctl.model.freezing import apply_trainable, trainable_parameter_count
from barctl.model.upcycle import branch
from tests.helpers import TINY_CONFIG, make_dense_checkpoint, model_logits
from tests.projects import apply, barctl, make_project, plan_json, tiny_manifest, write_manifest

BIG = 1 << 30
# head_dim differs from hidden_size // num_attention_heads (8), as in real Qwen3 models
QWEN3 = {"head_dim": 16}

DENSE = {
    "model_type": "qwen3",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 300,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "attention_bias": False,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 3,
    "layer_types": ["full_attention"] * 3,
}


def test_qwen3_maps_to_qwen3_moe_with_every_layer_sparse_and_no_renormalisation():
    assert family_for(DENSE) is QWEN3_MOE and family_for(DENSE, "qwen3_moe") is QWEN3_MOE
    config = QWEN3_MOE.moe_config(DENSE, num_experts=3, top_k=3)
    assert config["architectures"] == ["Qwen3MoeForCausalLM"] and config["model_type"] == "qwen3_moe"
    assert config["num_local_experts"] == 3 and config["num_experts_per_tok"] == 3
    assert config["moe_intermediate_size"] == config["intermediate_size"] == 64
    assert config["norm_topk_prob"] is False
    assert config["decoder_sparse_step"] == 1 and config["mlp_only_layers"] == []
    assert config["use_sliding_window"] is False
    for key in ("head_dim", "rope_parameters", "tie_word_embeddings", "rms_norm_eps", "attention_bias"):
        assert config[key] == DENSE[key], key
    assert "layer_types" not in config and "max_window_layers" not in config
    assert moe_family_for_moe_config(config) is QWEN3_MOE


@pytest.mark.parametrize("sliding", [
    {"layer_types": ["full_attention", "sliding_attention", "sliding_attention"]},
    {"layer_types": None, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
])
def test_qwen3_with_sliding_layers_is_refused(sliding):
    with pytest.raises(UnsupportedModel, match=r"sliding-window attention on layers \[1, 2\]"):
        family_for({**DENSE, **sliding})


def test_qwen2_is_refused_with_the_shared_expert_reason():
    with pytest.raises(UnsupportedModel, match="always adds a sigmoid-gated shared expert"):
        family_for({**DENSE, "model_type": "qwen2"})
    with pytest.raises(UnsupportedModel, match="does not fit a qwen3 anchor"):
        family_for(DENSE, "mixtral")


@pytest.fixture(scope="module")
def anchors(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("qwen3")
    return {
        tied: make_dense_checkpoint(root / f"anchor-{tied}", "qwen3", tokenizer_dir=tokenizer_dir,
                                    tie_word_embeddings=tied, **QWEN3)
        for tied in (False, True)
    }


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_branch_and_merge_of_untrained_experts_reproduce_the_dense_logits(tmp_path, anchors, tied):
    from transformers import AutoModelForCausalLM

    anchor = anchors[tied]
    experts = [tmp_path / "e1", tmp_path / "e2"]
    for seed, expert in enumerate(experts):
        branch(anchor, expert, ffn_dir=None, seed=seed, max_shard_bytes=BIG)
    config = json.loads((experts[0] / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and config["num_local_experts"] == 2
    assert config["num_experts_per_tok"] == 2
    dense_logits = model_logits(anchor)
    torch.testing.assert_close(model_logits(experts[0]), dense_logits, atol=1e-5, rtol=0)

    merged = tmp_path / "merged"
    merge(anchor, experts, merged, shared="average", top_k=3, max_shard_bytes=BIG)
    torch.testing.assert_close(model_logits(merged), dense_logits, atol=1e-5, rtol=0)

    # stock transformers loads the legacy per-expert names into v5's fused layout
    model, info = AutoModelForCausalLM.from_pretrained(merged, output_loading_info=True)
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hidden, inter = TINY_CONFIG["hidden_size"], TINY_CONFIG["intermediate_size"]
    mlp = model.model.layers[TINY_CONFIG["num_hidden_layers"] - 1].mlp
    assert tuple(mlp.experts.gate_up_proj.shape) == (3, 2 * inter, hidden)
    assert tuple(mlp.experts.down_proj.shape) == (3, hidden, inter)
    assert tuple(mlp.gate.weight.shape) == (3, hidden)
    reader = CheckpointReader(anchor)
    for proj, part in (("gate", slice(0, inter)), ("up", slice(inter, 2 * inter))):
        assert torch.equal(mlp.experts.gate_up_proj[0, part], reader.get(QWEN3_MOE.dense_ffn_name(1, proj)))
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (QWEN3["head_dim"],)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_plan_counts_equal_the_model_trainable_parameters(tmp_path, anchors):
    from transformers import AutoModelForCausalLM

    branch(anchors[False], tmp_path / "moe", ffn_dir=None, seed=0, max_shard_bytes=BIG)
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    for groups in (["expert", "router"], ["attention"], ["norms"], ["all"]):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
        assert trainable_parameter_count(config, groups) == sum(apply_trainable(model, groups).values()), groups


def test_expert_names_are_qwen3_moe_legacy_names():
    assert QWEN3_MOE.expert_name(2, 1, "gate") == "model.layers.2.mlp.experts.1.gate_proj.weight"
    assert QWEN3_MOE.router_name(0) == "model.layers.0.mlp.gate.weight"
    for proj in PROJS:
        assert QWEN3_MOE.parse_expert(QWEN3_MOE.expert_name(4, 3, proj)) == (4, 3, proj)


def test_apply_with_a_random_qwen3_anchor_and_one_sft_stage(tmp_path, tokenizer_dir):
    """plan, apply (branch, SFT, merge, router training, export), reload with stock transformers; the
    untrained expert equals the anchor."""
    from transformers import AutoModelForCausalLM

    chats = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                           {"role": "assistant", "content": str(a + b)}]} for a, b in [(1, 2), (3, 4)]]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    manifest = tiny_manifest(
        {"math": {"stages": [{"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]},
                              "training": {"max_steps": 1, "batch_size": 2, "max_length": 32}}]},
         "code": {}},
        datasets={"chat": {"path": "chat.jsonl", "format": "messages"}},
        routing={"train": {"fraction": 1.0, "aux_loss_weight": 0.01, "training": {"max_steps": 1, "batch_size": 2}}},
    )
    anchor = json.loads(json.dumps(manifest["base"]["anchor"]))
    anchor["random"]["family"] = "qwen3"
    anchor["random"]["config"]["head_dim"] = 16
    manifest["base"]["anchor"] = anchor
    path = make_project(tmp_path, tokenizer_dir, manifest)
    actions = plan_json(path)
    assert {a["action"] for a in actions.values()} == {"create"}
    apply(path)

    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "moe")
    assert type(moe).__name__ == "Qwen3MoeForCausalLM" and moe.config.num_experts == 3
    lock = json.loads(barctl("show", path, "--json").output)
    anchor_dir = tmp_path / lock["base"]["artifact"]["path"] / "anchor"
    code_dir = tmp_path / lock["experts.code.branch"]["artifact"]["path"]
    ids = [[4, 8, 15, 16, 23, 42]]
    torch.testing.assert_close(model_logits(code_dir, ids), model_logits(anchor_dir, ids), atol=1e-5, rtol=0)
    with torch.no_grad():
        assert torch.isfinite(moe(torch.tensor(ids)).logits).all()
    router = lock["router"]["metrics"]
    assert router["steps"] == 1 and router["trainable_parameters"] == 3 * 32 * 2  # every row of 2 layers' routers

    manifest["output"]["architecture"] = "flex_olmo"
    write_manifest(path, manifest)
    refused = barctl("plan", path)
    assert refused.exit_code == 1 and "base.anchor" in refused.output and "'flex_olmo' does not fit a qwen3" in refused.output
