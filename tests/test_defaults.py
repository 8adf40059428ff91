"""The manifest's defaults are written once, in the schema's `default` keywords: the recipe (and the judge,
the random anchor, the lockfile path) read them there. Every default the schema declares shows up, with the
same value, where the recipe puts that setting; and changing a default in the schema changes the recipe."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from barctl.evaluate.harness import task_settings
from barctl.manifest import schema
from barctl.manifest.recipe import STAGE_KINDS, Recipe, load_recipe
from barctl.rewards.judge import judge_settings
from tests.projects import make_project, tiny_manifest

JUDGE = {"path": "tok"}
LM_EVAL = {"metric": "lm_eval", "task": "arc_easy", "limit": None}

# Schema pointer of each `default` -> where the recipe keeps that setting, for a manifest that leaves it out:
# `r` declares every optional section, `p` is the plainest manifest (no datasets, stages or routing).
WHERE: dict[str, Callable[[Recipe, Recipe], Any]] = {
    "properties/seed": lambda r, p: r.seed,
    "properties/lockfile": lambda r, p: r.lockfile.name,
    "properties/sandbox/properties/isolation": lambda r, p: r.sandbox_isolation,
    "properties/datasets": lambda r, p: p.datasets,
    "properties/routing/properties/top_k": lambda r, p: r.routing["top_k"],
    "properties/routing/properties/shared": lambda r, p: r.routing["shared"],
    "properties/routing/properties/init": lambda r, p: p.routing["init"],
    "properties/routing/properties/train": lambda r, p: p.routing["train"],
    "properties/routing/properties/train/properties/fraction": lambda r, p: r.routing["train"]["fraction"],
    "properties/routing/properties/train/properties/aux_loss_weight": lambda r, p: r.routing["train"]["aux_loss_weight"],
    "properties/routing/properties/train/properties/z_loss_weight": lambda r, p: r.routing["train"]["z_loss_weight"],
    "properties/routing/properties/train/properties/training":
        lambda r, p: {k: r.routing["train"]["training"][k] for k in ("learning_rate", "epochs")},
    "properties/routing/properties/init_samples": lambda r, p: r.routing["init_samples"],
    "properties/output/properties/architecture": lambda r, p: r.output["architecture"],
    "properties/output/properties/dtype": lambda r, p: r.output["dtype"],
    "properties/output/properties/max_shard_size": lambda r, p: r.output["max_shard_size"],
    "properties/output/properties/smoke_test": lambda r, p: r.output["smoke_test"],
    "properties/evals/properties/models": lambda r, p: r.evals["models"],
    "properties/evals/properties/expert_domains": lambda r, p: r.evals["expert_domains"],
    "properties/evals/properties/routing_report": lambda r, p: r.evals["routing_report"],
    "properties/evals/properties/precision": lambda r, p: r.evals["precision"],
    "properties/baselines": lambda r, p: list(p.baselines),
    "$defs/eval_domain/properties/apply_chat_template": lambda r, p: task_settings(LM_EVAL)["apply_chat_template"],
    "$defs/eval_domain/properties/unsafe_code": lambda r, p: task_settings(LM_EVAL)["unsafe_code"],
    "$defs/model_source/properties/random/properties/seed": lambda r, p: 0,  # read where the anchor is drawn (model/source.py)
    "$defs/dataset/properties/split": lambda r, p: r.datasets["chat"]["split"],
    "$defs/dataset/properties/streaming": lambda r, p: r.datasets["chat"]["streaming"],
    "$defs/dataset/properties/shuffle_buffer": lambda r, p: r.datasets["chat"]["shuffle_buffer"],
    "$defs/reward/properties/weight": lambda r, p: r.expert("math").stages[1].rewards[0]["weight"],
    "$defs/judge/properties/kind": lambda r, p: judge_settings(JUDGE)["kind"],
    "$defs/judge/properties/template": lambda r, p: judge_settings(JUDGE)["template"],
    "$defs/judge/properties/max_new_tokens": lambda r, p: judge_settings(JUDGE)["max_new_tokens"],
    "$defs/judge/properties/batch_size": lambda r, p: judge_settings(JUDGE)["batch_size"],
    "$defs/launcher/properties/kind": lambda r, p: r.expert("math").stages[0].launcher["kind"],
    "$defs/expert/properties/stages": lambda r, p: list(p.expert("code").stages),
    "$defs/generation/properties/max_new_tokens": lambda r, p: r.evals["domains"]["chat"]["generation"]["max_new_tokens"],
    "$defs/generation/properties/batch_size": lambda r, p: r.evals["domains"]["chat"]["generation"]["batch_size"],
    "$defs/generation/properties/max_length": lambda r, p: r.evals["domains"]["chat"]["generation"]["max_length"],
    "$defs/gate/properties/tolerance": lambda r, p: r.gates[0]["tolerance"],
    "$defs/gate/properties/intervals_apart": lambda r, p: r.gates[0].get("intervals_apart", False),
    **{f"$defs/stage/allOf/{i}/then/properties/trainable": (lambda r, p, kind=kind: list(_stage_of_kind(r, kind).trainable))
       for i, kind in enumerate(STAGE_KINDS)},
}


def _stage_of_kind(recipe: Recipe, kind: str):
    return next(s for e in recipe.experts for s in e.stages if s.kind == kind)


def _schema_defaults(node: Any, pointer: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every `default` keyword in the schema, by its JSON pointer."""
    found: dict[str, Any] = {}
    if isinstance(node, dict):
        if "default" in node:
            found["/".join(pointer[:-1] if pointer[-1:] == ("default",) else pointer)] = node["default"]
        for key, value in node.items():
            if key != "default":
                found.update(_schema_defaults(value, pointer + (key,)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.update(_schema_defaults(value, pointer + (str(index),)))
    return found


def _sparse_recipe(tmp_path: Path, tokenizer_dir: Path) -> Recipe:
    """Every optional section present, every defaulted setting left out."""
    data = tmp_path / "data"
    data.mkdir(parents=True)
    row = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    (data / "chat.jsonl").write_text(json.dumps(row) + "\n")
    (data / "text.jsonl").write_text(json.dumps({"text": "2 + 2 = 4"}) + "\n")
    (data / "prompts.jsonl").write_text(json.dumps({"prompt": "2+2?", "answer": "4"}) + "\n")
    (data / "pairs.jsonl").write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    mix = lambda name: {"sources": [{"dataset": name, "fraction": 1.0}]}  # noqa: E731
    manifest = tiny_manifest(
        experts={
            "math": {"stages": [{"kind": "sft", "mix": mix("chat"), "launcher": {"num_processes": 1}},
                                {"kind": "grpo", "mix": mix("prompts"), "rewards": [{"name": "math_answer"}]},
                                {"kind": "midtrain", "mix": mix("text")},
                                {"kind": "dpo", "mix": mix("pairs")}]},
            "code": {"stages": [{"kind": "sft", "mix": mix("chat")}]},
        },
        datasets={"chat": {"path": "data/chat.jsonl", "format": "messages"},
                  "text": {"path": "data/text.jsonl", "format": "text"},
                  "prompts": {"path": "data/prompts.jsonl", "format": "prompt"},
                  "pairs": {"path": "data/pairs.jsonl", "format": "preference"}},
        routing={"init": "embedding", "train": {}},
        evals={"domains": {"chat": {"dataset": "chat", "metric": "loss"}}},
        gates=[{"model": "merged", "at_least": "anchor"}],
        output={"dir": "out/moe"},
    )
    return load_recipe(make_project(tmp_path, tokenizer_dir, manifest))


def test_every_schema_default_is_what_the_recipe_uses(tmp_path, tokenizer_dir):
    declared = _schema_defaults(schema.load_schema())
    assert set(declared) == set(WHERE), "a default without a check here, or a check without a default"
    recipe = _sparse_recipe(tmp_path / "sparse", tokenizer_dir)
    plain = load_recipe(make_project(tmp_path / "plain", tokenizer_dir))
    wrong = {pointer: (value, WHERE[pointer](recipe, plain)) for pointer, value in declared.items()
             if WHERE[pointer](recipe, plain) != value}
    assert wrong == {}


def test_a_default_changed_in_the_schema_changes_the_recipe(tmp_path, tokenizer_dir, monkeypatch):
    changed = json.loads(json.dumps(schema.load_schema()))
    output = changed["properties"]["output"]["properties"]
    output["max_shard_size"]["default"] = "7MB"
    changed["$defs"]["generation"]["properties"]["batch_size"]["default"] = 3
    changed["$defs"]["stage"]["allOf"][STAGE_KINDS.index("sft")]["then"]["properties"]["trainable"]["default"] = \
        ["expert"]
    monkeypatch.setattr(schema, "load_schema", lambda: changed)
    manifest = tiny_manifest(output={"dir": "out/moe"})
    path = make_project(tmp_path, tokenizer_dir, manifest)
    assert load_recipe(path).output["max_shard_size"] == "7MB"
    recipe = _sparse_recipe(tmp_path / "sparse", tokenizer_dir)
    assert recipe.evals["domains"]["chat"]["generation"]["batch_size"] == 3
    assert _stage_of_kind(recipe, "sft").trainable == ("expert",)


@pytest.mark.parametrize("kind", STAGE_KINDS)
def test_every_stage_kind_has_a_trainable_default(kind):
    assert schema.stage_defaults(kind)["trainable"]
