"""Routing: router initialisation variants and router training, through real tiny projects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from barctl.model.checkpoint import CheckpointReader
from barctl.model.router import mean_ffn_inputs, router_names
from barctl.data.text import row_text
from barctl.stages.router import as_prompt_completion
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
