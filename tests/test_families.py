import subprocess
import sys

import pytest

from barctl.errors import BarctlError, UnsupportedModel
from barctl.model.families import FLEX_OLMO, MIXTRAL, family_for, moe_family_for_moe_config, num_layers

LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 300,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "dtype": "bfloat16",
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
}


@pytest.mark.parametrize("model_type, family", [("llama", MIXTRAL), ("mistral", MIXTRAL), ("olmo2", FLEX_OLMO)])
def test_supported_pairs(model_type, family):
    assert family_for({**LLAMA, "model_type": model_type}) is family
    assert family_for({**LLAMA, "model_type": model_type}, family.name) is family


@pytest.mark.parametrize("model_type", ["gpt2", "gemma3"])
def test_unsupported_family_says_why(model_type):
    with pytest.raises(UnsupportedModel, match="no MoE counterpart in barctl yet; supported: llama, mistral, olmo2, qwen3"):
        family_for({**LLAMA, "model_type": model_type})


@pytest.mark.parametrize("key", ["attention_bias", "mlp_bias"])
def test_llama_with_biases_refused(key):
    with pytest.raises(UnsupportedModel, match=f"{key}=true: Mixtral has no bias terms"):
        family_for({**LLAMA, key: True})


def test_olmo2_attention_bias_is_carried():
    config = family_for({**LLAMA, "model_type": "olmo2", "attention_bias": True}).moe_config(
        {**LLAMA, "model_type": "olmo2", "attention_bias": True}, 2, 2
    )
    assert config["attention_bias"] is True


def test_output_architecture_must_match():
    with pytest.raises(UnsupportedModel, match="'flex_olmo' does not fit a llama anchor"):
        family_for(LLAMA, "flex_olmo")
    with pytest.raises(UnsupportedModel, match="'qwen3_moe' does not fit a llama anchor"):
        family_for(LLAMA, "qwen3_moe")
    with pytest.raises(UnsupportedModel, match="unknown output architecture 'deepseek_v3'"):
        family_for(LLAMA, "deepseek_v3")


def test_moe_anchor_and_missing_model_type_refused():
    with pytest.raises(UnsupportedModel, match="already a Mixture-of-Experts"):
        family_for({"model_type": "mixtral"})
    with pytest.raises(UnsupportedModel, match="no model_type"):
        family_for({})


def test_mixtral_config_carries_dense_fields():
    dense = {**LLAMA, "model_type": "mistral", "sliding_window": 64}
    config = MIXTRAL.moe_config(dense, num_experts=3, top_k=2)
    for key in ("hidden_size", "intermediate_size", "num_key_value_heads", "head_dim", "rope_parameters",
                "tie_word_embeddings", "sliding_window", "dtype", "pad_token_id", "rms_norm_eps", "vocab_size"):
        assert config[key] == dense[key], key
    assert config["architectures"] == ["MixtralForCausalLM"]
    assert config["model_type"] == "mixtral"
    assert config["num_local_experts"] == 3 and config["num_experts_per_tok"] == 2
    assert config["router_aux_loss_coef"] == 0.01 and config["output_router_logits"] is False
    assert "mlp_bias" not in config and "pretraining_tp" not in config


def test_flex_olmo_config():
    config = FLEX_OLMO.moe_config({**LLAMA, "model_type": "olmo2"}, num_experts=4, top_k=4)
    assert config["architectures"] == ["FlexOlmoForCausalLM"]
    assert config["num_experts"] == 4 and config["norm_topk_prob"] is False
    assert "head_dim" not in config


def test_top_k_bounds():
    with pytest.raises(BarctlError, match="top_k must be between 1 and 3"):
        MIXTRAL.moe_config(LLAMA, num_experts=3, top_k=4)


def test_names():
    assert MIXTRAL.expert_name(3, 1, "gate") == "model.layers.3.block_sparse_moe.experts.1.w1.weight"
    assert MIXTRAL.expert_name(0, 2, "up") == "model.layers.0.block_sparse_moe.experts.2.w3.weight"
    assert MIXTRAL.expert_name(0, 0, "down") == "model.layers.0.block_sparse_moe.experts.0.w2.weight"
    assert MIXTRAL.router_name(5) == "model.layers.5.block_sparse_moe.gate.weight"
    assert FLEX_OLMO.expert_name(1, 4, "up") == "model.layers.1.mlp.experts.4.up_proj.weight"
    assert FLEX_OLMO.router_name(1) == "model.layers.1.mlp.gate.weight"
    assert MIXTRAL.dense_ffn_name(2, "down") == "model.layers.2.mlp.down_proj.weight"
    for family in (MIXTRAL, FLEX_OLMO):
        assert family.parse_expert(family.expert_name(7, 3, "up")) == (7, 3, "up")
        assert family.parse_router(family.router_name(4)) == 4
        assert family.parse_dense_ffn(family.dense_ffn_name(2, "gate")) == (2, "gate")
        assert family.is_ffn_or_router(family.expert_name(0, 1, "down"))
        assert family.is_ffn_or_router(family.router_name(0))
        assert family.is_ffn_or_router(family.dense_ffn_name(0, "up"))
        for shared in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
                       "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"):
            assert not family.is_ffn_or_router(shared)
    assert num_layers(LLAMA) == 2


def test_moe_family_for_moe_config():
    assert moe_family_for_moe_config({"model_type": "mixtral"}) is MIXTRAL
    assert moe_family_for_moe_config({"model_type": "flex_olmo"}) is FLEX_OLMO
    with pytest.raises(UnsupportedModel, match="not a barctl Mixture-of-Experts"):
        moe_family_for_moe_config({"model_type": "llama"})


def test_families_imports_neither_torch_nor_transformers():
    code = "import sys, barctl.model.families; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
