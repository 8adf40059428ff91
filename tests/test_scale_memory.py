"""Memory at 7B scale, checked on tiny models on the CPU: router training and evaluations in their precision and
never under nn.DataParallel, the KV cache in the model's dtype, the anchor guard's small on-device copy, the MoE
kernel setting outside node keys, and use_vllm refused at plan without vllm."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from barctl.training import common
from tests.test_routing import chat_sample, router_training, tiny_moe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def moe_dir(tmp_path, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tiny_moe(tokenizer).save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    return tmp_path / "moe"


def test_no_data_parallel_when_one_process_sees_eight_gpus(tmp_path, tokenizer_dir, monkeypatch):
    from trl import SFTConfig

    from barctl.training.router_training import train_router

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(common, "on_cpu", lambda: False)
    assert SFTConfig(output_dir=str(tmp_path / "plain"), use_cpu=False, bf16=False).n_gpu == 8  # transformers alone
    built = []
    original = torch.nn.DataParallel.__init__
    monkeypatch.setattr(torch.nn.DataParallel, "__init__",
                        lambda self, *args, **kwargs: built.append(1) or original(self, *args, **kwargs))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    state = train_router(tiny_moe(tokenizer), tokenizer, chat_sample(), router_training(0.0), tmp_path / "router",
                         lambda _: None)
    assert built == []
    assert state.global_step == 3 and state.train_batch_size == 4  # the declared batch, not 8 GPUs x 4


def test_router_training_holds_the_frozen_model_in_bf16_on_a_gpu(moe_dir, monkeypatch):
    from barctl.model.freezing import apply_trainable
    from barctl.model.router_weights import router_weights
    from barctl.runners.router import load_for_router_training

    model, _ = load_for_router_training(moe_dir, {"precision": "bf16"})
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the CPU trains in fp32
    monkeypatch.setattr(common, "on_cpu", lambda: False)
    model, _ = load_for_router_training(moe_dir, {"precision": "bf16", "experts_implementation": "eager"})
    assert model.config._experts_implementation == "eager"
    apply_trainable(model, ["router"], freeze_anchor_row=False)
    common.trainable_in_fp32(model)
    routers = router_weights(model)
    assert all(w.dtype == torch.float32 for w in routers)
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the Trainer runs bf16
        model(input_ids=torch.tensor([[5, 17, 42, 99]]), labels=torch.tensor([[5, 17, 42, 99]])).loss.backward()
    assert all(w.grad is not None and w.grad.dtype == torch.float32 and w.grad.abs().sum() > 0 for w in routers)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_evaluation_loads_in_its_precision_and_caches_in_that_dtype(moe_dir, precision, dtype):
    from barctl.runners.eval import load_model

    ctx = SimpleNamespace(config={"model": "experts.math", "precision": precision},
                          recipe=SimpleNamespace(document=SimpleNamespace(data={})),
                          node=SimpleNamespace(inputs=("experts.math.sft",)), inputs={"experts.math.sft": moe_dir})
    model, tokenizer = load_model(ctx)
    assert {p.dtype for p in model.parameters()} == {dtype}
    out = model.generate(input_ids=torch.tensor([[5, 17, 42]]), max_new_tokens=3, do_sample=False,
                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    cache = out.past_key_values
    assert {layer.keys.dtype for layer in cache.layers} == {dtype}
    assert {layer.values.dtype for layer in cache.layers} == {dtype}


def test_anchor_guard_keeps_slot0_only_in_the_parameters_dtype_and_device_and_restores_bitwise(moe_dir):
    from barctl.model.freezing import AnchorGuard, apply_trainable

    model, _ = common.load_model(moe_dir, torch.bfloat16)
    apply_trainable(model, ["expert", "router"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    guard = AnchorGuard(model)
    params = {id(p) for p in trainable}
    assert {id(param) for param, _ in guard._saved} == params
    for param, slot0 in guard._saved:
        assert (slot0.dtype, slot0.device, slot0.shape) == (param.dtype, param.device, param.shape[1:])
    assert sum(slot0.numel() for _, slot0 in guard._saved) == sum(p[0].numel() for p in trainable)
    with torch.no_grad():
        for param in trainable:
            param.add_(0.5)
    guard.restore()
    for param, old in zip(trainable, before):
        assert torch.equal(param[0].view(torch.int16), old[0].view(torch.int16))
        assert not torch.equal(param[1:], old[1:])


def test_experts_implementation_changes_no_result_and_no_key(moe_dir):
    from barctl.engine.graph import node_key

    logits = {}
    ids = torch.tensor([[5, 17, 42, 99, 123, 7]])
    for kernel in ("eager", "batched_mm", "grouped_mm"):
        model, _ = common.load_model(moe_dir, experts_implementation=kernel)
        assert model.config._experts_implementation == kernel
        with torch.no_grad():
            logits[kernel] = model(input_ids=ids).logits
    torch.testing.assert_close(logits["batched_mm"], logits["eager"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits["grouped_mm"], logits["eager"], rtol=1e-5, atol=1e-5)
    training = {"learning_rate": 1e-3, "precision": "bf16"}
    stage = {"kind": "sft", "training": training}
    assert node_key("sft", stage, {}, {}) == node_key(
        "sft", {**stage, "training": {**training, "experts_implementation": "grouped_mm"}}, {}, {})
    router = {"init": "experts", "train": {"training": training}}
    assert node_key("router", router, {}, {}) == node_key(
        "router", {**router, "train": {"training": {**training, "experts_implementation": "eager"}}}, {}, {})
    assert node_key("sft", stage, {}, {}) != node_key("sft", {**stage, "training": {**training, "use_vllm": True}},
                                                      {}, {})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_use_vllm_is_refused_at_plan_without_vllm_and_on_stages_that_do_not_generate(tmp_path, tokenizer_dir):
    import json

    from tests.projects import barctl, make_project, tiny_manifest

    (tmp_path / "math.jsonl").write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    (tmp_path / "chat.jsonl").write_text(json.dumps({"prompt": "Hi", "completion": "Hello"}) + "\n")
    grpo = {"kind": "grpo", "mix": {"sources": [{"dataset": "math", "count": 1}]},
            "rewards": [{"name": "math_answer"}], "training": {"max_steps": 1, "use_vllm": True}}
    sft = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 1}]},
           "training": {"max_steps": 1, "use_vllm": True}}
    manifest = make_project(tmp_path, tokenizer_dir, tiny_manifest(
        {"math": {"stages": [sft, grpo]}},
        datasets={"math": {"path": "math.jsonl", "format": "prompt"},
                  "chat": {"path": "chat.jsonl", "format": "prompt_completion"}}))
    result = barctl("plan", manifest)
    assert result.exit_code == 1
    assert "experts.math.stages[1].training.use_vllm: use_vllm needs the vllm package" in result.output
    assert "experts.math.stages[0].training.use_vllm: use_vllm generates GRPO completions; a sft stage" \
        in result.output
    assert "Traceback" not in result.output
