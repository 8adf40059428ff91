"""Routing: router initialisation variants and router training, through real tiny projects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from barctl.data.row_text import row_text
from barctl.model.checkpoint import CheckpointReader
from barctl.model.router_weights import mean_ffn_inputs, router_names
from barctl.training.router_training import as_prompt_completion
from tests.projects import apply, barctl, make_project, plan_json, tiny_manifest, write_manifest

CHATS = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                       {"role": "assistant", "content": f"{a + b}"}]} for a in range(5) for b in range(4)]
CODE = [{"prompt": f"Write f{i}.", "completion": f"def f{i}(): return {i}"} for i in range(20)]
TEXTS = [{"text": f"Number {i} is {'even' if i % 2 == 0 else 'odd'}."} for i in range(20)]
FAST = {"learning_rate": 1e-2, "batch_size": 4, "max_steps": 2, "max_length": 64}
DATASETS = {"chat": {"path": "chat.jsonl", "format": "messages"},
            "code": {"path": "code.jsonl", "format": "prompt_completion"},
            "text": {"path": "text.jsonl", "format": "text"}}


pytestmark = pytest.mark.usefixtures("one_thread")


def sft(dataset: str, count: int = 8) -> dict:
    return {"kind": "sft", "mix": {"sources": [{"dataset": dataset, "count": count}]}, "training": FAST}


def routed_project(root: Path, tokenizer_dir: Path, routing: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("chat", CHATS), ("code", CODE), ("text", TEXTS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    midtrain = {"kind": "midtrain", "mix": {"sources": [{"dataset": "text", "count": 8}]}, "training": FAST}
    manifest = tiny_manifest({"math": {"stages": [midtrain, sft("chat")]}, "code": {"stages": [sft("code")]}},
                             datasets=DATASETS, routing=routing)
    return make_project(root, tokenizer_dir, manifest)


def artifact(manifest: Path, node_id: str) -> Path:
    entry = json.loads(barctl("show", manifest, "--json").output)[node_id]
    return manifest.parent / entry["artifact"]["path"]


def routers(moe_dir: Path) -> list[torch.Tensor]:
    with CheckpointReader(moe_dir) as reader:
        return [reader.get(name) for name in router_names(reader)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_dir) -> Path:
    """A project whose router is initialised from the experts' rows, then trained."""
    manifest = routed_project(tmp_path_factory.mktemp("trained"), tokenizer_dir,
                              {"train": {"fraction": 0.25, "training": {"max_steps": 3, "batch_size": 2,
                                                                        "max_length": 64, "learning_rate": 0.05}}})
    apply(manifest)
    return manifest


def test_experts_init_is_exactly_the_merged_rows_and_training_changes_only_the_router(trained):
    router_dir = artifact(trained, "router")
    init = load_file(router_dir / "router-init.safetensors")
    with CheckpointReader(artifact(trained, "merge")) as merge:
        names = router_names(merge)
        assert list(init) == sorted(names) and all(torch.equal(init[n], merge.get(n)) for n in names)
    for (name, before), after in zip(init.items(), load_file(router_dir / "router.safetensors").values()):
        assert before.shape == after.shape == (3, 32)
        assert not torch.equal(before, after), name

    exported = trained.parent / "out" / "moe"
    with CheckpointReader(exported) as out, CheckpointReader(artifact(trained, "merge")) as merge:
        trained_rows = load_file(router_dir / "router.safetensors")
        for name in merge.names():
            if name in trained_rows:
                assert torch.equal(out.get(name), trained_rows[name])
            else:  # experts, attention, norms, embeddings: untouched by router training
                assert torch.equal(out.get(name), merge.get(name)), name


def test_router_training_samples_each_expert_and_records_it(trained):
    entry = json.loads(barctl("show", trained, "--json").output)["router"]
    metrics = entry["metrics"]
    assert metrics["sample_rows"] == {"math": 2, "code": 2}  # 25% of each expert's 8 SFT rows
    assert metrics["steps"] == 3 and metrics["trainable_parameters"] == 2 * 3 * 32
    plan = barctl("plan", trained)
    assert "No changes" in plan.output


def test_router_training_follows_one_expert_change(trained):
    original = trained.read_text()
    document = yaml.safe_load(original)
    document["experts"]["code"]["stages"][0]["training"]["learning_rate"] = 0.02
    write_manifest(trained, document)
    try:
        changed = {k: v["action"] for k, v in plan_json(trained).items() if v["action"] != "keep"}
    finally:
        trained.write_text(original)
    assert changed == {"experts.code.sft": "rebuild", "merge": "rebuild", "router": "rebuild", "export": "rebuild"}


def test_embedding_init_rows_are_unit_mean_hidden_states_and_warn_when_alike(tmp_path, tokenizer_dir):
    manifest = routed_project(tmp_path / "p", tokenizer_dir, {"init": "embedding", "init_samples": 4})
    result = apply(manifest)
    rows = load_file(artifact(manifest, "router") / "router.safetensors")
    for tensor in rows.values():
        assert tensor.shape == (3, 32)
        assert torch.allclose(tensor.norm(dim=1), torch.ones(3), atol=1e-5)
        mean = tensor[1:].mean(dim=0)
        assert torch.allclose(tensor[0], mean / mean.norm(), atol=1e-5)
        assert not torch.allclose(tensor[1], tensor[2])
    assert "nearly identical" not in result.output

    document = yaml.safe_load(manifest.read_text())
    document["experts"]["code"]["stages"] = [sft("chat")]  # both experts read the same data
    document["experts"]["math"]["stages"] = [sft("chat")]
    document["routing"]["init_samples"] = 8  # every row of the identical mixes
    write_manifest(manifest, document)
    result = apply(manifest)
    assert "warning: router rows nearly identical (cosine): anchor and math (1.0000), anchor and code " \
        "(1.0000), math and code (1.0000)" in result.output


def test_mean_ffn_inputs_ignore_padding(tokenizer_dir, tmp_path):
    from tests.helpers import make_dense_checkpoint

    model_dir = make_dense_checkpoint(tmp_path / "dense", tokenizer_dir=tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = ["short", "a much longer text with many more tokens in it"]
    together = mean_ffn_inputs(model, tokenizer, texts, batch_size=2)
    counts = [len(tokenizer(t)["input_ids"]) for t in texts]
    alone = [mean_ffn_inputs(model, tokenizer, [t], batch_size=1) for t in texts]
    weighted = (alone[0] * counts[0] + alone[1] * counts[1]) / sum(counts)
    assert together.shape == (2, 32)
    assert torch.allclose(together, weighted, atol=1e-5)


def test_prompts_init_uses_each_experts_prompts(tmp_path, tokenizer_dir):
    prompts = {"math": ["What is 2 + 2?", "Solve 3x = 9."], "code": ["def fib(n):"]}
    manifest = routed_project(tmp_path / "p", tokenizer_dir, {"init": "prompts", "prompts": prompts})
    apply(manifest)
    rows = load_file(artifact(manifest, "router") / "router.safetensors")
    assert all(t.shape == (3, 32) for t in rows.values())
    entry = json.loads(barctl("show", manifest, "--json").output)["router"]
    assert entry["config"]["prompts"] == prompts and entry["inputs"].keys() == {"merge", "base"}


def test_rows_render_every_format_for_the_model(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    chat = CHATS[0]["messages"]
    assert row_text(tokenizer, {"text": "plain"}) == "plain"
    assert row_text(tokenizer, {"messages": chat}) == tokenizer.apply_chat_template(chat, tokenize=False)
    assert row_text(tokenizer, {"prompt": "Q: ", "completion": "A"}) == "Q: A"
    assert row_text(tokenizer, {"prompt": "Q: ", "chosen": "yes", "rejected": "no"}) == "Q: yes"
    assert row_text(tokenizer, {"prompt": chat[:1], "answer": "3"}).endswith("<|im_start|>assistant\n")
    assert as_prompt_completion({"messages": chat}) == {"prompt": chat[:1], "completion": chat[1:]}
    assert as_prompt_completion({"prompt": "Q", "completion": "A"}) == {
        "prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}


@pytest.mark.parametrize("routing, message", [
    ({"init": "prompts"}, "init: prompts needs routing.prompts for every expert; missing: math, code"),
    ({"init": "prompts", "prompts": {"math": ["x"], "cod": ["y"]}}, "unknown expert 'cod' (did you mean 'code'?)"),
    ({"prompts": {"math": ["x"]}}, "prompts only goes with init: prompts"),
    ({"init_samples": 3}, "init_samples only goes with init: embedding"),
])
def test_routing_mistakes_are_reported_with_their_place(tmp_path, tokenizer_dir, routing, message):
    manifest = routed_project(tmp_path / "p", tokenizer_dir, routing)
    result = barctl("validate", manifest)
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_embedding_init_and_router_training_need_data(tmp_path, tokenizer_dir):
    manifest = make_project(tmp_path, tokenizer_dir, tiny_manifest(routing={"init": "embedding", "train": {}}))
    output = barctl("validate", manifest).output
    assert "no stage with a mix: math, code" in output
    assert "no expert has an sft stage with a mix" in output


# router z-loss


def test_router_z_loss_on_a_hand_example():
    from barctl.training.router_training import router_z_loss

    layers = [torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]]), torch.tensor([[0.0, 0.0], [0.0, 0.0], [9.0, 9.0]])]
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    lse_12, ln2 = math.log(math.exp(1) + math.exp(2)), math.log(2)
    expected = (lse_12 ** 2 + ln2 ** 2) / 2 + ln2 ** 2  # per layer a mean over real tokens; summed over layers
    assert router_z_loss(layers, mask).item() == pytest.approx(expected, rel=1e-6)
    assert router_z_loss(layers).item() == pytest.approx(
        (lse_12 ** 2 + ln2 ** 2 + (5 + ln2) ** 2) / 3 + (2 * ln2 ** 2 + (9 + ln2) ** 2) / 3, rel=1e-6)


def tiny_moe(tokenizer):
    from transformers import MixtralConfig, MixtralForCausalLM

    from barctl.model.router_weights import router_weights
    from tests.helpers import TINY_CONFIG

    config = MixtralConfig(**TINY_CONFIG, vocab_size=len(tokenizer), num_local_experts=3, num_experts_per_tok=3,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).float()
    model.requires_grad_(False)
    for weight in router_weights(model):
        weight.requires_grad_(True)
    return model


def router_training(z_loss_weight: float) -> dict:
    return {"aux_loss_weight": 0.0, "z_loss_weight": z_loss_weight,
            "training": {"learning_rate": 0.05, "max_steps": 3, "batch_size": 4, "max_length": 64, "seed": 0}}


def chat_sample():
    import datasets

    return datasets.Dataset.from_list([as_prompt_completion(row) for row in CHATS[:12]])


def test_z_loss_adds_its_weighted_value_to_the_training_loss(tokenizer_dir, tmp_path):
    from barctl.training.router_training import build_router_trainer, router_z_loss

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_moe(tokenizer)
    trainer = build_router_trainer(model, tokenizer, chat_sample(), router_training(0.5), tmp_path)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.train()
    with_z = trainer.compute_loss(model, dict(inputs)).item()
    trainer.z_loss_weight = 0.0
    without = trainer.compute_loss(model, dict(inputs)).item()
    router_inputs = []
    handles = [layer.mlp.register_forward_pre_hook(lambda module, args: router_inputs.append(args[0].detach()))
               for layer in model.model.layers]
    with torch.no_grad():
        model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
    for handle in handles:
        handle.remove()
    logits = [hidden.reshape(-1, hidden.shape[-1]) @ layer.mlp.gate.weight.T
              for hidden, layer in zip(router_inputs, model.model.layers)]
    expected = router_z_loss(logits, inputs.get("attention_mask")).item()
    assert expected > 0 and with_z - without == pytest.approx(0.5 * expected, rel=1e-4)


def test_z_loss_changes_the_trained_router_and_shrinks_its_logits(tokenizer_dir, tmp_path):
    from barctl.model.router_weights import captured_router_logits, router_weights
    from barctl.training.router_training import router_z_loss, train_router

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    trained, z_values = [], []
    probe = torch.tensor([tokenizer(row_text(tokenizer, CHATS[0]))["input_ids"]])
    for weight in (0.0, 1.0):
        model = tiny_moe(tokenizer)
        train_router(model, tokenizer, chat_sample(), router_training(weight), tmp_path / str(weight), lambda _: None)
        trained.append([w.detach().clone() for w in router_weights(model)])
        with torch.no_grad(), captured_router_logits(model) as logits:
            model.eval()(probe)
            z_values.append(router_z_loss(logits).item())
    assert not all(torch.equal(a, b) for a, b in zip(*trained))
    assert z_values[1] < z_values[0]


def test_z_loss_weight_enters_the_routers_key_only_when_set(trained):
    original = trained.read_text()
    document = yaml.safe_load(original)
    try:
        document["routing"]["train"]["z_loss_weight"] = 0
        write_manifest(trained, document)
        assert "No changes" in barctl("plan", trained).output  # the default keeps existing keys
        document["routing"]["train"]["z_loss_weight"] = 0.001
        write_manifest(trained, document)
        actions = plan_json(trained)
    finally:
        trained.write_text(original)
    assert {k for k, v in actions.items() if v["action"] != "keep"} == {"router", "export"}
    assert any("z_loss_weight" in reason for reason in actions["router"]["reasons"]), actions["router"]["reasons"]


def test_router_training_warns_about_experts_without_sft_rows(tmp_path, tokenizer_dir):
    manifest = routed_project(tmp_path / "p", tokenizer_dir, {"train": {"training": {"max_steps": 1}}})
    document = yaml.safe_load(manifest.read_text())
    document["experts"]["math"]["stages"] = document["experts"]["math"]["stages"][:1]  # midtrain only
    write_manifest(manifest, document)
    result = apply(manifest, "--target", "router")
    assert "warning: router training has no rows from math (no sft stage with data)" in result.output
    metrics = json.loads(barctl("show", manifest, "--json").output)["router"]["metrics"]
    assert metrics["sample_rows"] == {"math": 0, "code": 1}


def test_z_loss_weight_must_not_be_negative(tmp_path, tokenizer_dir):
    manifest = routed_project(tmp_path / "p", tokenizer_dir, {"train": {"z_loss_weight": -0.1}})
    result = barctl("validate", manifest)
    assert result.exit_code == 1 and "routing.train.z_loss_weight" in result.output, result.output
    assert "Traceback" not in result.output
