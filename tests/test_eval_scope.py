"""What an evaluation costs: experts evaluated on their own domain only, a routing report on the first rows,
and generation batched by prompt length with the completions back in the prompts' order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.projects import apply, barctl, changed, make_project, plan_json, tiny_manifest, write_manifest

CHATS = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                       {"role": "assistant", "content": f"The answer is {a + b}."}]} for a in range(4) for b in range(3)]
MATH = [{"prompt": [{"role": "user", "content": f"What is {a} + 1?"}], "answer": str(a + 1)} for a in range(6)]
CODE = [{"text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(6)]
STAGE = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 4}]},
         "training": {"learning_rate": 1e-2, "batch_size": 4, "max_steps": 1, "max_length": 64}}
EVALS = {"expert_domains": "own", "routing_report": 2,
         "generation": {"max_new_tokens": 3, "batch_size": 4, "max_length": 64},
         "domains": {"math": {"dataset": "math_eval", "metric": "math_answer", "limit": 4},
                     "code": {"dataset": "code_eval", "metric": "loss"}}}

pytestmark = pytest.mark.usefixtures("one_thread")


def project(root: Path, tokenizer_dir: Path, evals: dict = EVALS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("chat", CHATS), ("math_eval", MATH), ("code_eval", CODE)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return make_project(root, tokenizer_dir, manifest_of(evals))


def manifest_of(evals: dict) -> dict:
    datasets = {"chat": {"path": "chat.jsonl", "format": "messages"},
                "math_eval": {"path": "math_eval.jsonl", "format": "prompt"},
                "code_eval": {"path": "code_eval.jsonl", "format": "text"}}
    return tiny_manifest({"math": {"stages": [STAGE]}, "code": {"stages": [STAGE]}}, datasets=datasets, evals=evals)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer_dir):
    manifest = project(tmp_path_factory.mktemp("scope"), tokenizer_dir)
    result = apply(manifest)
    assert result.exit_code == 0, result.output
    return manifest, result


def test_experts_are_evaluated_on_their_own_domain_only(built):
    manifest, result = built
    entries = json.loads(barctl("show", manifest, "--json").output)
    assert entries["eval.experts.math"]["metrics"]["domains"].keys() == {"math"}
    assert entries["eval.experts.code"]["metrics"]["domains"].keys() == {"code"}
    assert entries["eval.anchor"]["metrics"]["domains"].keys() == {"math", "code"}
    assert entries["eval.merged"]["metrics"]["domains"].keys() == {"math", "code"}
    table = json.loads(barctl("eval", manifest, "--json").output)
    # an expert evaluated on one domain has no average: it would not be comparable with the others'
    assert "average" not in table["scores"]["experts.math"]
    assert "average" in table["scores"]["anchor"] and "average" in table["scores"]["merged"]
    assert "average" not in table["ci95"]["experts.math"]
    card = (manifest.parent / "out" / "moe" / "README.md").read_text()
    assert any(line.startswith("| experts.math | ") and line.endswith("| - | - |") for line in card.splitlines())


def test_the_routing_report_reads_only_its_first_rows(built, tokenizer_dir):
    from transformers import AutoTokenizer

    manifest, _ = built
    entry = json.loads(barctl("show", manifest, "--json").output)["eval.merged"]
    results = json.loads((manifest.parent / entry["artifact"]["path"] / "results.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(manifest.parent / "tok")
    first_two = sum(len(tokenizer(row["text"])["input_ids"]) for row in CODE[:2])
    assert results["routing"]["code"]["tokens"] == first_two


def test_another_domains_data_does_not_rebuild_an_experts_own_evaluation(built):
    manifest, _ = built
    (manifest.parent / "code_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CODE[::-1]))
    actions = changed(plan_json(manifest))
    assert actions == {"eval.anchor": "rebuild", "eval.experts.code": "rebuild", "eval.merged": "rebuild",
                       "export": "rebuild"}


def test_a_loss_domain_does_not_rebuild_when_only_the_generation_length_changes(built):
    manifest, _ = built
    # the lockfile's code rows (an earlier test reverses them), so that only the manifest differs
    (manifest.parent / "code_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CODE))
    longer = {**EVALS, "generation": {**EVALS["generation"], "max_new_tokens": 5}}
    write_manifest(manifest, manifest_of(longer))
    try:
        actions = changed(plan_json(manifest))
    finally:
        write_manifest(manifest, manifest_of(EVALS))
    # the code domain is scored by loss: it generates nothing, so only the math domain's evaluations rebuild
    assert actions == {"eval.anchor": "rebuild", "eval.experts.math": "rebuild", "eval.merged": "rebuild",
                       "export": "rebuild"}


def test_own_needs_a_domain_named_like_every_expert(tmp_path, tokenizer_dir):
    evals = {**EVALS, "domains": {"math": EVALS["domains"]["math"]}}
    manifest = project(tmp_path, tokenizer_dir, evals)
    result = barctl("validate", manifest)
    assert result.exit_code == 1
    assert "evals.expert_domains" in result.output and "no domain is named 'code'" in result.output
    write_manifest(manifest, {**tiny_manifest(), "evals": {**evals, "routing_report": 0}})
    assert "routing_report" in barctl("validate", manifest).output


def test_generation_batches_by_length_and_keeps_the_prompts_order(tokenizer_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from barctl.evaluate.generate import generate

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(config)
    prompts = ["one two three four five six seven", "one", "one two three", "one two", "one two three four five"]
    together = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=2, max_length=64)
    alone = [generate(model, tokenizer, [p], max_new_tokens=4, batch_size=1, max_length=64)[0] for p in prompts]
    assert together == alone
