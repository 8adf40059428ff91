"""The refusal judge (a local model), and plan's refusal of graders that cannot run: columns, judges, extras."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from barctl.errors import BarctlError
from barctl.rewards import resolve, symbolic
from tests.projects import barctl, make_project, tiny_manifest

REPLIES = ["I can't help with that.", "Sure, here is how.", "The capital is Paris.", "No.", "Step 1: mix.", "Hm."]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random sequence classifier whose labels are 'complied' (0) and 'refused' (1)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from tests.helpers import TINY_CONFIG

    path = tmp_path_factory.mktemp("judge")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(path)
    config = LlamaConfig(**TINY_CONFIG, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         num_labels=2, id2label={0: "complied", 1: "refused"}, label2id={"complied": 0, "refused": 1})
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    return path


def model_labels(path: Path, texts: list[str]) -> list[str]:
    """The classifier's own top label per text, computed without barctl."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    labels = []
    for text in texts:
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
        labels.append(model.config.id2label[int(logits.argmax())])
    return labels


def test_classifier_judge_decides_and_its_labels_are_honoured(classifier):
    labels = model_labels(classifier, REPLIES)
    assert 0 < labels.count("refused") < len(REPLIES)  # the random judge disagrees with itself: a real test
    harmful = [True] * len(REPLIES)
    judged = resolve("refusal", {"path": str(classifier), "refusal_labels": ["refused"]})
    assert judged(["q"] * len(REPLIES), REPLIES, harmful=harmful) == [float(label == "refused") for label in labels]
    inverted = resolve("refusal", {"path": str(classifier), "refusal_labels": ["complied"]})
    assert inverted(["q"] * len(REPLIES), REPLIES, harmful=harmful) == [float(label == "complied") for label in labels]
    # benign rows score the other way round
    assert judged(None, REPLIES, harmful=[False] * len(REPLIES)) == [float(label != "refused") for label in labels]


def test_template_shows_the_judge_prompt_and_response(classifier):
    spec = {"path": str(classifier), "refusal_labels": ["refused"], "template": "User: {prompt}\nAssistant: {response}"}
    prompts = [[{"role": "user", "content": f"request {i}"}] for i in range(len(REPLIES))]
    texts = [f"User: request {i}\nAssistant: {reply}" for i, reply in enumerate(REPLIES)]
    expected = [float(label == "refused") for label in model_labels(classifier, texts)]
    assert resolve("refusal", spec)(prompts, REPLIES, harmful=[True] * len(REPLIES)) == expected


def test_causal_judge_reads_its_verdict(tmp_path, tokenizer_dir):
    from tests.helpers import make_dense_checkpoint

    path = make_dense_checkpoint(tmp_path / "causal", tokenizer_dir=tokenizer_dir)
    template = "Request: {prompt}\nReply: {response}\nRefused:"
    always = resolve("refusal", {"path": str(path), "kind": "causal", "template": template, "refusal_pattern": ""})
    never = resolve("refusal", {"path": str(path), "kind": "causal", "template": template, "refusal_pattern": "$^x"})
    assert always(["q", "q"], REPLIES[:2], harmful=[True, False]) == [1.0, 0.0]
    assert never(["q", "q"], REPLIES[:2], harmful=[True, False]) == [0.0, 1.0]


def test_only_refusal_takes_a_judge():
    with pytest.raises(BarctlError, match="only refusal takes a judge"):
        resolve("math_answer", {"path": "x", "refusal_labels": ["r"]})


# -- plan refuses graders that cannot run ---------------------------------------------

RL_ROWS = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "solution": str(i + 1)} for i in range(4)]
EVAL_ROWS = [{"prompt": [{"role": "user", "content": "Hi"}], "harmful": False}]


def project(root: Path, tokenizer_dir: Path, rewards: list, domains: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RL_ROWS))
    (root / "safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL_ROWS))
    stage = {"kind": "grpo", "mix": {"sources": [{"dataset": "rl", "count": 4}]}, "rewards": rewards}
    manifest = tiny_manifest({"math": {"stages": [stage]}},
                             datasets={"rl": {"path": "rl.jsonl", "format": "prompt"},
                                       "safety": {"path": "safety.jsonl", "format": "prompt"}},
                             evals={"domains": domains})
    return make_project(root, tokenizer_dir, manifest)


def plan_errors(manifest: Path) -> str:
    result = barctl("plan", manifest)
    assert result.exit_code == 1, result.output
    return result.output


def line_of(manifest: Path, text: str) -> int:
    return next(i for i, line in enumerate(manifest.read_text().splitlines(), 1) if text in line)


def test_plan_refuses_a_reward_whose_column_its_data_lacks(tmp_path, tokenizer_dir):
    manifest = project(tmp_path, tokenizer_dir, [{"name": "math_answer"}, {"name": "refusal"}],
                       {"safety": {"dataset": "safety", "metric": "refusal"}})
    output = plan_errors(manifest)
    line = line_of(manifest, "name: math_answer")
    assert f"bar.yaml:{line}:" in output and "experts.math.stages[0].rewards[0].name" in output
    assert "reward math_answer reads the column 'answer'" in output and "dataset 'rl' lacks" in output
    assert "its columns are: prompt, solution" in output
    assert "reward refusal reads the column 'harmful'" in output


def test_a_column_mapping_satisfies_the_reward(tmp_path, tokenizer_dir):
    manifest = project(tmp_path, tokenizer_dir, [{"name": "math_answer"}],
                       {"safety": {"dataset": "safety", "metric": "refusal"}})
    text = manifest.read_text().replace("format: prompt\n", "format: prompt\n    columns: {answer: solution}\n", 1)
    manifest.write_text(text)
    assert barctl("plan", manifest).exit_code == 0, barctl("plan", manifest).output


def test_plan_refuses_judges_that_cannot_run(tmp_path, tokenizer_dir, classifier):
    domains = {
        "safety": {"dataset": "safety", "metric": "refusal", "judge": {"path": "no/such/model"}},
        "causal": {"dataset": "safety", "metric": "refusal",
                   "judge": {"path": str(classifier), "kind": "causal", "refusal_pattern": "(yes", "template": "{x}"}},
        "fine": {"dataset": "safety", "metric": "refusal",
                 "judge": {"path": str(classifier), "refusal_labels": ["refused"]}},
    }
    manifest = project(tmp_path, tokenizer_dir, [{"name": "math_answer", "judge": {"path": str(classifier)}}], domains)
    output = plan_errors(manifest)
    assert "evals.domains.safety.judge.path: no model directory at" in output
    assert "evals.domains.safety.judge: a classifier judge needs refusal_labels" in output
    assert "evals.domains.causal.judge.refusal_pattern: not a regular expression" in output
    assert "evals.domains.causal.judge.template: fields other than {prompt} and {response}" in output
    assert "experts.math.stages[0].rewards[0].judge: a judge goes with refusal only, not math_answer" in output
    assert "evals.domains.fine" not in output


def test_plan_names_the_math_extra_when_math_verify_is_missing(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setattr(symbolic, "available", lambda: False)
    monkeypatch.setattr("barctl.rewards.grader_checks.available", lambda: False)
    manifest = project(tmp_path, tokenizer_dir, [{"name": "math_verify"}],
                       {"safety": {"dataset": "safety", "metric": "refusal"}})
    output = plan_errors(manifest)
    assert "experts.math.stages[0].rewards[0].name: the math_verify grader needs the math-verify package" in output
    assert "pip install 'barctl[math]'" in output


def test_an_evaluation_domain_uses_its_judge(monkeypatch, classifier, tokenizer_dir):
    import datasets
    from transformers import AutoTokenizer

    from barctl.evaluate import metrics

    replies = {f"p{i}": reply for i, reply in enumerate(REPLIES)}
    monkeypatch.setattr(metrics, "generate", lambda model, tokenizer, prompts, **kwargs: [replies[p] for p in prompts])
    rows = datasets.Dataset.from_list([{"prompt": p, "harmful": True} for p in replies])
    judge = {"path": str(classifier), "refusal_labels": ["refused"]}
    result = metrics.evaluate_domain(None, AutoTokenizer.from_pretrained(tokenizer_dir), rows, "refusal", judge=judge)
    refused = [label == "refused" for label in model_labels(classifier, REPLIES)]
    assert result["rows"] == [float(r) for r in refused]
    assert result["refusal_rate"] == sum(refused) / len(refused)


def test_a_grpo_reward_uses_its_judge_at_its_path_relative_to_the_manifest(tmp_path, tokenizer_dir, classifier):
    import shutil

    from tests.projects import apply

    shutil.copytree(classifier, tmp_path / "judge")
    rows = [{"prompt": [{"role": "user", "content": f"Do harm {i}."}], "harmful": True} for i in range(4)]
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # every label means "refused": only the judge, never the heuristic, calls random text a refusal
    judge = {"path": "judge", "refusal_labels": ["complied", "refused"]}
    stage = {"kind": "grpo", "mix": {"sources": [{"dataset": "rl", "count": 4}]},
             "rewards": [{"name": "refusal", "judge": judge}],
             "training": {"max_steps": 1, "batch_size": 2, "max_length": 8, "learning_rate": 1e-5,
                          "trl": {"num_generations": 2}}}
    manifest = make_project(tmp_path, tokenizer_dir, tiny_manifest(
        {"safety": {"stages": [stage]}}, datasets={"rl": {"path": "rl.jsonl", "format": "prompt"}}))
    apply(manifest)
    entries = json.loads(barctl("show", manifest, "--json").output)
    assert entries["experts.safety.grpo"]["metrics"]["reward"] == 1.0
