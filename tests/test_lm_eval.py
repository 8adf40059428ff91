"""The lm_eval metric: an lm-evaluation-harness task as an evaluation domain, run offline on local tasks
over local JSONL files. Scores equal lm-eval's own; the task's files key the node; plan refuses a task
that cannot run, at its YAML location."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from barctl.evaluate.intervals import Z95, score_interval
from tests.projects import apply, barctl, changed, make_project, plan_json, tiny_manifest

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-evaluation-harness is not installed: pip install 'barctl[lm_eval]'")

ROWS = [{"question": f"What is {a} + 1?", "choices": [str(a + 1), str(a + 2), str(a)], "answer": 0} for a in range(8)]
MULTIPLE_CHOICE = {
    "task": "tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "rows.jsonl"}},
    "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
}
GENERATE = {
    "task": "tiny_gen", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "rows.jsonl"}},
    "test_split": "test", "output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{choices[0]}}", "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
}


def write_tasks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    for config in (MULTIPLE_CHOICE, GENERATE):
        (folder / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def lm_eval_project(root: Path, tokenizer_dir: Path, **domain) -> Path:
    write_tasks(root / "tasks")
    evals = {"models": ["anchor"], "generation": {"batch_size": 4},
             "domains": {"bench": {"metric": "lm_eval", "task": "tiny_mc", "include_path": "tasks", **domain}}}
    return make_project(root, tokenizer_dir, tiny_manifest(evals=evals))


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory, tokenizer_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers import make_dense_checkpoint

    path = make_dense_checkpoint(tmp_path_factory.mktemp("model"), tokenizer_dir=tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@needs_lm_eval
@pytest.mark.parametrize("task, metric", [("tiny_mc", "acc,none"), ("tiny_gen", "exact_match,none")])
def test_score_and_rows_are_what_lm_eval_reports(tmp_path, monkeypatch, model_and_tokenizer, task, metric):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from barctl.evaluate.harness import evaluate_task

    model, tokenizer = model_and_tokenizer
    folder = write_tasks(tmp_path / "tasks")
    ours = evaluate_task(model, tokenizer, {"task": task, "limit": 6, "generation": {"batch_size": 4}}, folder)

    monkeypatch.chdir(folder)  # lm-eval reads the YAML's relative data file from the working folder
    direct = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4), tasks=[task],
                             task_manager=TaskManager(include_path=str(folder), include_defaults=False), limit=6)
    assert ours["task_metric"] == metric
    assert ours["score"] == direct["results"][task][metric]
    assert ours["stderr"] == direct["results"][task][metric.replace(",", "_stderr,")]
    name = metric.split(",")[0]
    assert ours["rows"] == [float(sample[name]) for sample in direct["samples"][task]]
    assert ours["n"] == 6 and ours["score"] == pytest.approx(np.mean(ours["rows"]))


@needs_lm_eval
def test_an_unknown_task_metric_is_refused_with_the_ones_reported(tmp_path, model_and_tokenizer):
    from barctl.errors import BarctlError
    from barctl.evaluate.harness import evaluate_task

    model, tokenizer = model_and_tokenizer
    domain = {"task": "tiny_mc", "limit": 2, "generation": {"batch_size": 2}, "task_metric": "f1,none"}
    with pytest.raises(BarctlError, match=r"tiny_mc: lm-eval reports no metric 'f1,none'; it reports acc,none"):
        evaluate_task(model, tokenizer, domain, write_tasks(tmp_path / "tasks"))


def test_a_score_that_is_no_mean_of_rows_gets_lm_evals_stderr_interval():
    low, high = score_interval("lm_eval", [[0.4, 0.05]], "bleu")
    assert low == pytest.approx(0.4 - Z95 * 0.05, abs=0.01) and high == pytest.approx(0.4 + Z95 * 0.05, abs=0.01)
    assert score_interval("lm_eval", [[0.4, 0.05]], "bleu") == (low, high)  # seeded by the domain


@needs_lm_eval
def test_the_task_yaml_and_its_data_key_the_eval_node(tmp_path, tokenizer_dir):
    manifest = lm_eval_project(tmp_path, tokenizer_dir)
    assert plan_json(manifest)["eval.anchor"]["action"] == "create"
    apply(manifest)
    assert changed(plan_json(manifest)) == {}

    task_file = tmp_path / "tasks" / "tiny_mc.yaml"
    task_file.write_text(task_file.read_text().replace("Answer:", "A:"))
    assert changed(plan_json(manifest)) == {"eval.anchor": "rebuild", "export": "rebuild"}
    task_file.write_text(task_file.read_text().replace("A:", "Answer:"))
    assert changed(plan_json(manifest)) == {}
    (tmp_path / "tasks" / "rows.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert changed(plan_json(manifest)) == {"eval.anchor": "rebuild", "export": "rebuild"}


@needs_lm_eval
def test_apply_keeps_the_score_its_interval_and_every_row(tmp_path, tokenizer_dir):
    manifest = lm_eval_project(tmp_path, tokenizer_dir, limit=6)
    apply(manifest)
    entry = json.loads(barctl("show", manifest, "--json").output)["eval.anchor"]
    bench = entry["metrics"]["domains"]["bench"]
    assert bench["task_metric"] == "acc,none" and bench["n"] == 6 and "rows" not in bench
    artifact = next((tmp_path / ".barctl" / "store").rglob("results.json"))
    rows = json.loads(artifact.read_text())["domains"]["bench"]["rows"]
    assert len(rows) == 6 and bench["score"] == pytest.approx(sum(rows) / 6)
    assert tuple(bench["ci95"]) == pytest.approx(score_interval("lm_eval", rows, "bench"))


def test_plan_refuses_lm_eval_when_it_is_not_installed(tmp_path, tokenizer_dir, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else
                        real_find_spec(name, *a))
    result = barctl("plan", lm_eval_project(tmp_path, tokenizer_dir))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search(r"bar\.yaml:\d+:\d+: evals\.domains\.bench\.metric: the lm_eval metric needs "
                     r"lm-evaluation-harness, which is not installed: pip install 'barctl\[lm_eval\]'", result.output)


@needs_lm_eval
@pytest.mark.parametrize("domain, message", [
    ({"task": "tiny_mcq"}, r"bench\.task: no YAML in \S+tasks defines a task or group named 'tiny_mcq'"),
    ({"include_path": "no_tasks"}, r"bench\.include_path: no folder at \S+no_tasks"),
])
def test_plan_refuses_a_task_it_cannot_find(tmp_path, tokenizer_dir, domain, message):
    result = barctl("plan", lm_eval_project(tmp_path, tokenizer_dir, **domain))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search(r"bar\.yaml:\d+:\d+: evals\.domains\." + message, result.output), result.output


@needs_lm_eval
def test_plan_refuses_a_missing_data_file(tmp_path, tokenizer_dir):
    manifest = lm_eval_project(tmp_path, tokenizer_dir)
    (tmp_path / "tasks" / "rows.jsonl").unlink()
    result = barctl("plan", manifest)
    assert result.exit_code == 1
    assert re.search(r"evals\.domains\.bench\.task: its data file \S+rows\.jsonl does not exist", result.output)


@pytest.mark.parametrize("domain, message", [
    ({"metric": "lm_eval"}, "evals.domains.bench: missing required field 'task'"),
    ({"metric": "lm_eval", "task": "gsm8k", "dataset": "chat"},
     "evals.domains.bench.dataset: an lm_eval domain reads its task's own data: remove dataset"),
    ({"metric": "loss", "dataset": "chat", "task": "gsm8k"},
     "evals.domains.bench.task: task goes with metric lm_eval only"),
    ({"metric": "loss"}, "evals.domains.bench: missing required field 'dataset'"),
])
def test_validate_places_lm_eval_fields(tmp_path, tokenizer_dir, domain, message):
    (tmp_path / "chat.jsonl").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "chat.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    manifest = make_project(tmp_path, tokenizer_dir, tiny_manifest(
        datasets={"chat": {"path": "chat.jsonl", "format": "text"}}, evals={"domains": {"bench": domain}}))
    result = barctl("validate", manifest)
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output
