import json

import pytest
import torch

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader
from barctl.model.families import FLEX_OLMO, MIXTRAL, PROJS
from barctl.model.upcycle import branch
from tests.helpers import TINY_CONFIG, make_dense_checkpoint, make_tokenizer_dir, model_logits

BIG = 1 << 30


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_dir(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize(
    "family, overrides, moe",
    [
        ("llama", {}, MIXTRAL),
        ("llama", {"tie_word_embeddings": True}, MIXTRAL),
        ("mistral", {"sliding_window": 8}, MIXTRAL),
        ("olmo2", {}, FLEX_OLMO),
    ],
    ids=["llama", "llama-tied", "mistral", "olmo2"],
)
def test_branch_reproduces_dense_logits(tmp_path, tok_dir, family, overrides, moe):
    anchor = make_dense_checkpoint(tmp_path / "anchor", family=family, tokenizer_dir=tok_dir, **overrides)
    out = tmp_path / "moe"
    branch(anchor, out, ffn_dir=None, seed=0, max_shard_bytes=BIG)

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == moe.name and config["architectures"] == [moe.architecture]
    assert moe.num_experts(config) == 2 and config["num_experts_per_tok"] == 2
    for key, value in overrides.items():
        assert config[key] == value
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}

    dense, moe_reader = CheckpointReader(anchor), CheckpointReader(out)
    for layer in range(TINY_CONFIG["num_hidden_layers"]):
        for proj in PROJS:
            a = dense.get(moe.dense_ffn_name(layer, proj))
            assert torch.equal(moe_reader.get(moe.expert_name(layer, 0, proj)), a)
            assert torch.equal(moe_reader.get(moe.expert_name(layer, 1, proj)), a)
        assert moe_reader.shape_of(moe.router_name(layer)) == (2, TINY_CONFIG["hidden_size"])

    torch.testing.assert_close(model_logits(out), model_logits(anchor), atol=1e-5, rtol=0)


def test_branch_slot1_from_pretrained_and_seeded_router(tmp_path, tok_dir):
    anchor = make_dense_checkpoint(tmp_path / "anchor", seed=0, tokenizer_dir=tok_dir)
    pretrained = make_dense_checkpoint(tmp_path / "pretrained", seed=1, tokenizer_dir=tok_dir)
    branch(anchor, tmp_path / "a", ffn_dir=pretrained, seed=7, max_shard_bytes=BIG)
    branch(anchor, tmp_path / "b", ffn_dir=None, seed=7, max_shard_bytes=BIG)
    branch(anchor, tmp_path / "c", ffn_dir=None, seed=8, max_shard_bytes=BIG)
    a, b, c = (CheckpointReader(tmp_path / x) for x in "abc")
    dense, pre = CheckpointReader(anchor), CheckpointReader(pretrained)
    ffn = MIXTRAL.dense_ffn_name(1, "up")
    assert torch.equal(a.get(MIXTRAL.expert_name(1, 0, "up")), dense.get(ffn))
    assert torch.equal(a.get(MIXTRAL.expert_name(1, 1, "up")), pre.get(ffn))
    for shared in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert torch.equal(a.get(shared), dense.get(shared))
    router = MIXTRAL.router_name(0)
    assert torch.equal(a.get(router), b.get(router))
    assert not torch.equal(b.get(router), c.get(router))
    assert a.get(router).std().item() == pytest.approx(0.02, rel=0.5)


def test_branch_refuses_mismatched_pretrained(tmp_path, tok_dir):
    anchor = make_dense_checkpoint(tmp_path / "anchor", tokenizer_dir=tok_dir)
    wider = make_dense_checkpoint(tmp_path / "wider", tokenizer_dir=tok_dir, intermediate_size=96)
    with pytest.raises(BarctlError, match=r"model\.layers\.0\.mlp\.down_proj\.weight has shape \[32, 96\]"):
        branch(anchor, tmp_path / "out", ffn_dir=wider, seed=0, max_shard_bytes=BIG)


def test_branch_keeps_dtype(tmp_path, tok_dir):
    anchor = make_dense_checkpoint(tmp_path / "anchor", tokenizer_dir=tok_dir)
    bf16 = tmp_path / "bf16"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(anchor, dtype=torch.bfloat16).save_pretrained(bf16)
    branch(bf16, tmp_path / "out", ffn_dir=None, seed=0, max_shard_bytes=BIG)
    out = CheckpointReader(tmp_path / "out")
    assert out.dtype_of(MIXTRAL.expert_name(0, 0, "gate")) == torch.bfloat16
    assert out.dtype_of(MIXTRAL.router_name(0)) == torch.bfloat16
    assert out.config["dtype"] == "bfloat16"
