"""Parameter groups, the anchor-slot guard and the torch-free trainable count, on tiny branched MoEs."""

from __future__ import annotations

import json

import pytest
import torch

from barctl.errors import BarctlError
from barctl.model.freezing import (
    AnchorGuard,
    anchor_slot,
    apply_trainable,
    check_anchor_slot,
    group_of,
    tied_note,
    trainable_parameter_count,
)
from barctl.model.upcycle import branch
from tests.helpers import make_dense_checkpoint

VARIANTS = {
    "mixtral": ("llama", {}),
    "mixtral_tied": ("llama", {"tie_word_embeddings": True}),
    "flex_olmo": ("olmo2", {}),
    "flex_olmo_bias": ("olmo2", {"attention_bias": True}),
}


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("freezing")
    dirs = {}
    for name, (family, overrides) in VARIANTS.items():
        dense = make_dense_checkpoint(root / f"{name}-dense", family, tokenizer_dir=tokenizer_dir, **overrides)
        branch(dense, root / name, ffn_dir=None, seed=0, max_shard_bytes=10**9)
        dirs[name] = root / name
    return dirs


def load(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


GROUP_SETS = [
    ["expert", "router"],
    ["expert", "router", "embeddings", "lm_head"],
    ["lm_head"],
    ["embeddings"],
    ["attention", "norms"],
    ["all"],
]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_count_from_config_equals_the_instantiated_model(moe_dirs, variant):
    config = json.loads((moe_dirs[variant] / "config.json").read_text())
    for groups in GROUP_SETS:
        model = load(moe_dirs[variant])
        counts = apply_trainable(model, groups)
        # Ground truth: every trainable tensor once, minus the protected anchor slot and router row.
        expected = sum(
            p.numel() // p.shape[0] * (p.shape[0] - 1) if group_of(n) in ("expert", "router") else p.numel()
            for n, p in model.named_parameters()
            if p.requires_grad
        )
        assert sum(counts.values()) == expected == trainable_parameter_count(config, groups), (variant, groups)


def test_tied_embeddings_train_through_either_group_and_count_once(moe_dirs):
    model = load(moe_dirs["mixtral_tied"])
    counts = apply_trainable(model, ["lm_head"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.requires_grad
    assert counts == {"lm_head": 300 * 32}
    assert apply_trainable(model, ["embeddings", "lm_head"]) == {"embeddings": 300 * 32, "lm_head": 0}
    config = json.loads((moe_dirs["mixtral_tied"] / "config.json").read_text())
    assert "trains both" in tied_note(config, ["expert", "lm_head"])
    assert tied_note(config, ["embeddings", "lm_head"]) is None
    assert tied_note({"tie_word_embeddings": False}, ["lm_head"]) is None


def test_groups_select_the_right_tensors(moe_dirs):
    model = load(moe_dirs["flex_olmo"])
    apply_trainable(model, ["attention", "router"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.layers.0.self_attn.q_norm.weight" in trainable
    assert "model.layers.1.mlp.gate.weight" in trainable
    assert not any("experts" in n or "embed" in n or "layernorm" in n or n == "model.norm.weight" for n in trainable)
    with pytest.raises(BarctlError, match="unknown trainable group"):
        apply_trainable(model, ["experts"])


def test_slot0_read_from_the_model_matches_the_saved_legacy_layout(moe_dirs):
    model = load(moe_dirs["mixtral"])
    from_model, from_dir = anchor_slot(model), anchor_slot(moe_dirs["mixtral"])
    keys = sorted(f"layers.{i}.{p}" for i in (0, 1) for p in ("gate", "up", "down", "router"))
    assert sorted(from_model) == sorted(from_dir) == keys
    for key in from_dir:
        assert torch.equal(from_model[key], from_dir[key]), key
    check_anchor_slot(model, moe_dirs["mixtral"])


def test_check_anchor_slot_fails_on_any_change_to_slot0_only(moe_dirs):
    model = load(moe_dirs["mixtral"])
    anchor = anchor_slot(moe_dirs["mixtral"])
    with torch.no_grad():
        model.model.layers[1].mlp.experts.down_proj[1].add_(1.0)
    check_anchor_slot(model, anchor)
    with torch.no_grad():
        model.model.layers[1].mlp.experts.down_proj[0, 3, 5] += 1e-7
    with pytest.raises(BarctlError, match="layers.1.down differs"):
        check_anchor_slot(model, anchor)


def _train(model, steps: int, guard: AnchorGuard | None) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = torch.tensor([[5, 17, 42, 99, 123, 200, 7, 250]] * 2)
    for _ in range(steps):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if guard is not None:
            guard.restore()


def test_slot0_survives_adamw_with_weight_decay_while_everything_else_trains(moe_dirs):
    model = load(moe_dirs["mixtral"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_trainable(model, ["all"])
    _train(model, 3, AnchorGuard(model))
    check_anchor_slot(model, moe_dirs["mixtral"])
    for name, param in model.named_parameters():
        anchored = group_of(name) in ("expert", "router")
        changed = param[1:] if anchored else param
        reference = before[name][1:] if anchored else before[name]
        assert not torch.equal(changed, reference), f"{name} did not train"
        if anchored:
            assert torch.equal(param[0].view(torch.uint8), before[name][0].view(torch.uint8)), name


def _diverged(model_dir):
    """The branched model with slot 1 moved away from slot 0, so that routing matters to the loss."""
    model = load(model_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.experts.down_proj[1].mul_(-3.0)
    return model


def test_router_row0_is_frozen_in_stages_and_trains_in_router_training(moe_dirs):
    model = _diverged(moe_dirs["mixtral"])
    apply_trainable(model, ["router"])
    ids = torch.tensor([[5, 17, 42, 99]])
    model(ids, labels=ids).loss.backward()
    grad = model.model.layers[0].mlp.gate.weight.grad
    assert grad[0].abs().max() == 0 and grad[1].abs().max() > 0
    model = _diverged(moe_dirs["mixtral"])
    apply_trainable(model, ["router"], freeze_anchor_row=False)
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].mlp.gate.weight.grad[0].abs().max() > 0


def test_check_anchor_slot_fails_when_the_routers_anchor_row_moves(moe_dirs):
    model = load(moe_dirs["flex_olmo"])
    with torch.no_grad():
        model.model.layers[1].mlp.gate.weight[1, 2] += 1.0
    check_anchor_slot(model, moe_dirs["flex_olmo"])
    with torch.no_grad():
        model.model.layers[1].mlp.gate.weight[0, 2] += 1e-7
    with pytest.raises(BarctlError, match=r"router's anchor row \(row 0\) changed in training: layers.1.router"):
        check_anchor_slot(model, moe_dirs["flex_olmo"])


def test_gradient_hook_alone_does_not_stop_weight_decay(moe_dirs):
    model = load(moe_dirs["mixtral"])
    apply_trainable(model, ["expert"])
    ids = torch.tensor([[5, 17, 42, 99]])
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].mlp.experts.gate_up_proj.grad[0].abs().max() == 0
    assert model.model.layers[0].mlp.experts.gate_up_proj.grad[1].abs().max() > 0
    model.zero_grad()
    _train(model, 2, guard=None)
    with pytest.raises(BarctlError, match="changed in training"):
        check_anchor_slot(model, moe_dirs["mixtral"])
