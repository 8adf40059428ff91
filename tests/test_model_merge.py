import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader
from barctl.model.expert_merge import merge
from barctl.model.families import FLEX_OLMO, MIXTRAL, PROJS
from barctl.model.upcycle import branch
from tests.helpers import TINY_CONFIG, make_dense_checkpoint, make_tokenizer_dir, model_logits

BIG = 1 << 30
LAYERS = TINY_CONFIG["num_hidden_layers"]
SHARED = ("model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight", "model.norm.weight")


def edit_checkpoint(model_dir, edit):
    """Rewrite a single-file tiny checkpoint in place: `edit(tensors)` mutates the dict."""
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_dir(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tok_dir):
    """An anchor and two distinct 'trained' experts (slot 1, router and shared tensors perturbed)."""
    root = tmp_path_factory.mktemp("llama")
    anchor = make_dense_checkpoint(root / "anchor", tokenizer_dir=tok_dir)
    experts = []
    for i in (1, 2):
        expert = root / f"expert{i}"
        branch(anchor, expert, ffn_dir=None, seed=i, max_shard_bytes=BIG)
        generator = torch.Generator().manual_seed(100 + i)

        def perturb(tensors, generator=generator, scale=0.1 * i):
            for name in list(tensors):
                if MIXTRAL.parse_expert(name) and MIXTRAL.parse_expert(name)[1] == 1 or name in SHARED:
                    tensors[name] = tensors[name] + scale * torch.randn(tensors[name].shape, generator=generator)

        edit_checkpoint(expert, perturb)
        experts.append(expert)
    return anchor, experts


@pytest.mark.parametrize("family, moe", [("llama", MIXTRAL), ("olmo2", FLEX_OLMO)])
def test_merge_of_untrained_experts_is_the_anchor(tmp_path, tok_dir, family, moe):
    anchor = make_dense_checkpoint(tmp_path / "anchor", family=family, tokenizer_dir=tok_dir)
    experts = [tmp_path / "e1", tmp_path / "e2"]
    for seed, expert in enumerate(experts):
        branch(anchor, expert, ffn_dir=None, seed=seed, max_shard_bytes=BIG)
    out = tmp_path / "merged"
    report = merge(anchor, experts, out, shared="average", top_k=3, max_shard_bytes=BIG)
    config = json.loads((out / "config.json").read_text())
    assert moe.num_experts(config) == 3 and config["num_experts_per_tok"] == 3
    assert report["num_experts"] == 3 and report["max_shared_abs_diff"] < 1e-6
    torch.testing.assert_close(model_logits(out), model_logits(anchor), atol=1e-5, rtol=0)


def test_merge_places_slots_routers_and_shared_mean(tmp_path, llama):
    anchor_dir, expert_dirs = llama
    out = tmp_path / "merged"
    report = merge(anchor_dir, expert_dirs, out, shared="average", top_k=2, max_shard_bytes=4096)
    anchor, merged = CheckpointReader(anchor_dir), CheckpointReader(out)
    experts = [CheckpointReader(d) for d in expert_dirs]
    assert (out / "model.safetensors.index.json").is_file()  # small shards: streamed into several files

    for layer in range(LAYERS):
        for proj in PROJS:
            assert torch.equal(merged.get(MIXTRAL.expert_name(layer, 0, proj)),
                               anchor.get(MIXTRAL.dense_ffn_name(layer, proj)))
            for i, expert in enumerate(experts, start=1):
                assert torch.equal(merged.get(MIXTRAL.expert_name(layer, i, proj)),
                                   expert.get(MIXTRAL.expert_name(layer, 1, proj)))
        routers = [e.get(MIXTRAL.router_name(layer)) for e in experts]
        router = merged.get(MIXTRAL.router_name(layer))
        assert router.shape == (3, TINY_CONFIG["hidden_size"])
        torch.testing.assert_close(router[0], (routers[0][0] + routers[1][0]) / 2)
        assert torch.equal(router[1], routers[0][1]) and torch.equal(router[2], routers[1][1])

    for name in SHARED + ("model.layers.0.self_attn.q_proj.weight",):
        mean = (anchor.get(name) + experts[0].get(name) + experts[1].get(name)) / 3
        torch.testing.assert_close(merged.get(name), mean)
    assert report["shared_tensors_averaged"] == len([n for n in anchor.names() if not MIXTRAL.is_ffn_or_router(n)])
    assert report["max_shared_abs_diff"] > 0.01

    merged_logits = model_logits(out)
    assert torch.isfinite(merged_logits).all()


def test_merge_shared_anchor_keeps_anchor_tensors(tmp_path, llama):
    anchor_dir, expert_dirs = llama
    out = tmp_path / "merged"
    report = merge(anchor_dir, expert_dirs, out, shared="anchor", top_k=3, max_shard_bytes=BIG)
    anchor, merged = CheckpointReader(anchor_dir), CheckpointReader(out)
    for name in SHARED:
        assert torch.equal(merged.get(name), anchor.get(name))
    assert report["shared_tensors_averaged"] == 0


def test_tampered_slot0_is_refused(tmp_path, llama):
    anchor_dir, expert_dirs = llama
    tampered = tmp_path / "tampered"
    branch(anchor_dir, tampered, ffn_dir=None, seed=3, max_shard_bytes=BIG)
    name = MIXTRAL.expert_name(1, 0, "down")
    edit_checkpoint(tampered, lambda t: t.__setitem__(name, t[name] * (1 + 1e-3)))
    with pytest.raises(BarctlError) as error:
        merge(anchor_dir, [expert_dirs[0], tampered], tmp_path / "out", shared="average", top_k=3, max_shard_bytes=BIG)
    message = str(error.value)
    assert str(tampered) in message and "layer 1" in message and name in message
    assert "slot 0 must stay frozen" in message


def test_mismatched_experts_are_refused(tmp_path, tok_dir, llama):
    anchor_dir, expert_dirs = llama
    olmo = make_dense_checkpoint(tmp_path / "olmo", family="olmo2", tokenizer_dir=tok_dir)
    branch(olmo, tmp_path / "olmo_expert", ffn_dir=None, seed=0, max_shard_bytes=BIG)
    with pytest.raises(BarctlError, match="flex_olmo MoE but the anchor"):
        merge(anchor_dir, [tmp_path / "olmo_expert"], tmp_path / "out", shared="average", top_k=2,
              max_shard_bytes=BIG)
    merge(anchor_dir, expert_dirs, tmp_path / "three", shared="average", top_k=3, max_shard_bytes=BIG)
    with pytest.raises(BarctlError, match="has 3 experts"):
        merge(anchor_dir, [tmp_path / "three"], tmp_path / "out2", shared="average", top_k=2, max_shard_bytes=BIG)
    with pytest.raises(BarctlError, match="top_k must be between 1 and 3"):
        merge(anchor_dir, expert_dirs, tmp_path / "out3", shared="average", top_k=4, max_shard_bytes=BIG)
