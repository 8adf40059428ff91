"""Evaluations and gates through real tiny projects: the table, the lock, the model card, `barctl eval`,
what an expert change rebuilds, and a failing gate that stops the export but keeps every artifact."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from barctl.evaluate.gate_rules import gate_failures
from barctl.evaluate.intervals import wilson
from barctl.evaluate.results import eval_intervals, eval_scores, small_sample_warning
from barctl.manifest.recipe import load_recipe
from tests.projects import apply, barctl, changed, make_project, plan_json, tiny_manifest, write_manifest

CHATS = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                       {"role": "assistant", "content": f"The answer is {a + b}."}]} for a in range(5) for b in range(4)]
MATH = [{"prompt": [{"role": "user", "content": f"What is {a} + 1?"}], "answer": str(a + 1)} for a in range(6)]
HELDOUT = [{"text": f"Number {i} is {'even' if i % 2 == 0 else 'odd'}."} for i in range(6)]
FAST = {"learning_rate": 1e-2, "batch_size": 4, "max_steps": 2, "max_length": 64}
DATASETS = {"chat": {"path": "chat.jsonl", "format": "messages"},
            "math_eval": {"path": "math_eval.jsonl", "format": "prompt"},
            "heldout": {"path": "heldout.jsonl", "format": "text"}}
EVALS = {"generation": {"max_new_tokens": 4, "batch_size": 4, "max_length": 64},
         "domains": {"math": {"dataset": "math_eval", "metric": "math_answer", "limit": 4},
                     "general": {"dataset": "heldout", "metric": "loss"}}}
MODELS = ["anchor", "experts.math", "experts.code", "merged"]


pytestmark = pytest.mark.usefixtures("one_thread")


def evaluated_project(root: Path, tokenizer_dir: Path, **top) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("chat", CHATS), ("math_eval", MATH), ("heldout", HELDOUT)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 8}]}, "training": FAST}
    manifest = tiny_manifest({"math": {"stages": [stage]}, "code": {"stages": [stage]}},
                             **{"datasets": DATASETS, "evals": EVALS, **top})
    return make_project(root, tokenizer_dir, manifest)


def lock(manifest: Path) -> dict:
    return json.loads(barctl("show", manifest, "--json").output)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer_dir):
    manifest = evaluated_project(tmp_path_factory.mktemp("evals"), tokenizer_dir,
                                 gates=[{"model": "merged", "at_least": 0.0, "domains": ["average"]}])
    return manifest, apply(manifest)


def test_apply_prints_the_table_and_records_scores(built):
    manifest, result = built
    assert "Evaluation (higher is better; 95% intervals)" in result.output
    for model in MODELS:
        assert model in result.output
    entries = lock(manifest)
    for node, model in zip(["eval.anchor", "eval.experts.math", "eval.experts.code", "eval.merged"], MODELS):
        metrics = entries[node]["metrics"]
        assert entries[node]["config"]["model"] == model
        assert metrics["domains"]["math"]["n"] == 4 and 0 <= metrics["domains"]["math"]["score"] <= 1
        general = metrics["domains"]["general"]
        assert general["score"] == pytest.approx(torch.exp(torch.tensor(-general["loss"])).item(), rel=1e-5)
        assert metrics["average"] == pytest.approx((metrics["domains"]["math"]["score"] + general["score"]) / 2)
        assert "samples" not in metrics["domains"]["math"]  # they stay in the artifact's results.json
    shares = entries["eval.merged"]["metrics"]["routing"]
    assert shares.keys() == {"math", "general"}
    assert all(len(row) == 3 and sum(row) == pytest.approx(1, abs=1e-3) for row in shares.values())
    assert entries["gates"]["metrics"]["passed"] == ["merged >= 0 on average"]


def test_model_card_carries_the_table(built):
    manifest, _ = built
    card = (manifest.parent / "out" / "moe" / "README.md").read_text()
    assert "| model | math | general | average |" in card
    rows = [line.split(" | ")[0].lstrip("| ") for line in card.splitlines() if line.startswith("| ")]
    assert rows[1:5] == MODELS  # BAR's order: the anchor, the experts as declared, the merged model
    assert all(f"| {model} |" in card for model in MODELS)
    assert "| domain | anchor | math | code |" in card


def test_barctl_eval_on_a_built_project_only_prints(built):
    manifest, _ = built
    result = barctl("eval", manifest)
    assert result.exit_code == 0, result.output
    assert "No changes" in result.output and "Evaluation (higher is better; 95% intervals)" in result.output
    scores = json.loads(barctl("eval", manifest, "--json").output)["scores"]
    assert set(scores) == set(MODELS) and set(scores["merged"]) == {"math", "general", "average"}


def test_eval_json_gives_every_score_its_interval_from_the_stored_rows(built):
    manifest, _ = built
    report = json.loads(barctl("eval", manifest, "--json").output)
    assert set(report["ci95"]) == set(MODELS)
    entries = lock(manifest)
    for node, model in zip(["eval.anchor", "eval.experts.math", "eval.experts.code", "eval.merged"], MODELS):
        stored = json.loads((manifest.parent / entries[node]["artifact"]["path"] / "results.json").read_text())
        math_rows, general_rows = stored["domains"]["math"]["rows"], stored["domains"]["general"]["rows"]
        assert len(math_rows) == 4 and all(r in (0.0, 1.0) for r in math_rows)
        assert sum(math_rows) / 4 == pytest.approx(report["scores"][model]["math"])
        low, high = wilson(sum(math_rows), 4)
        assert report["ci95"][model]["math"] == [pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4)]
        nll, tokens = map(sum, zip(*general_rows))  # per row: summed nll, target tokens
        assert len(general_rows) == 6 and math.exp(-nll / tokens) == pytest.approx(report["scores"][model]["general"])
        assert low <= report["scores"][model]["math"] <= high
        for domain, (low, high) in report["ci95"][model].items():
            assert 0 <= low <= high <= 1, (model, domain)
        assert entries[node]["metrics"]["domains"]["math"]["ci95"] == report["ci95"][model]["math"]
        assert "rows" not in entries[node]["metrics"]["domains"]["math"]  # they stay in results.json
    top1, entropy = report["routing_top1"], report["routing_entropy"]
    assert set(top1) == set(entropy) == {"math", "general"}
    for domain, shares in top1.items():  # anchor, math, code: the merged model's slot order
        assert len(shares) == 3 and sum(shares) == pytest.approx(1, abs=1e-3)
        assert 0 < entropy[domain] <= math.log(3) + 1e-6


def test_the_table_and_the_card_show_intervals_and_routing(built):
    manifest, result = built
    report = json.loads(barctl("eval", manifest, "--json").output)
    low, high = report["ci95"]["merged"]["math"]
    card = (manifest.parent / "out" / "moe" / "README.md").read_text()
    assert f"{report['scores']['merged']['math']:.3f} [{low:.3f}, {high:.3f}]" in card
    assert f"[{low:.3f}, {high:.3f}]" in result.output  # on 80 columns, under its score
    shares, top1 = report["routing"]["math"][0], report["routing_top1"]["math"][0]
    assert f"{shares:.1%} / {top1:.1%}" in card and f"{shares:.1%} / {top1:.1%}" in result.output
    assert f"| {report['routing_entropy']['math']:.3f} |" in card
    assert report["warnings"] == [w for w in [small_sample_warning(lock(manifest))] if w]


def evaluation_entries(anchor_hits: int, expert_hits: int, rows: int) -> dict:
    entries = {}
    for model, hits in (("anchor", anchor_hits), ("experts.math", expert_hits)):
        ci = list(wilson(hits, rows))
        entries[f"eval.{model}"] = {"kind": "eval", "config": {"model": model}, "metrics": {
            "domains": {"math": {"score": hits / rows, "n": rows, "ci95": ci}},
            "average": hits / rows, "average_ci95": ci}}
    return entries


@pytest.mark.parametrize("width", [60, 200])
def test_printed_table_keeps_every_interval_readable_and_warns_when_samples_are_too_small(width):
    from io import StringIO

    from rich.console import Console

    from barctl.render import print_evaluations

    def printed(entries: dict) -> str:
        out = StringIO()
        print_evaluations(Console(file=out, width=width), ["math"], ["anchor", "math"], entries)
        return out.getvalue()

    small = printed(evaluation_entries(2, 5, 8))
    low, high = wilson(5, 8)
    assert f"0.625 [{low:.3f}, {high:.3f}]" in small if width == 200 else f"[{low:.3f}, {high:.3f}]" in small
    assert "experts.math: 95% intervals overlap the anchor's on every domain" in " ".join(small.split())
    assert "8 evaluation rows" in small
    assert "overlap" not in printed(evaluation_entries(20, 180, 200))


def test_older_evaluations_rebuild_with_the_reason(built, monkeypatch):
    import barctl.engine.graph

    manifest, _ = built
    monkeypatch.setitem(barctl.engine.graph.KIND_VERSIONS, "eval", barctl.engine.graph.KIND_VERSIONS["eval"] + 1)
    actions = plan_json(manifest)
    assert all(actions[node]["action"] == "rebuild" for node in ("eval.anchor", "eval.merged"))
    assert any("version" in reason for reason in actions["eval.merged"]["reasons"]), actions["eval.merged"]


def test_changing_one_expert_rebuilds_its_chain_and_evaluations_only(built):
    manifest, _ = built
    original = manifest.read_text()
    document = yaml.safe_load(original)
    document["experts"]["code"]["stages"][0]["training"]["learning_rate"] = 0.02
    write_manifest(manifest, document)
    try:
        actions = plan_json(manifest)
    finally:
        manifest.write_text(original)
    changed = {node for node, a in actions.items() if a["action"] != "keep"}
    assert changed == {"experts.code.sft", "merge", "router", "eval.experts.code", "eval.merged", "gates", "export"}


def test_a_failing_gate_fails_apply_keeps_artifacts_and_holds_the_export(tmp_path, tokenizer_dir):
    gate = {"name": "merged-is-perfect", "model": "merged", "at_least": 1.0, "domains": ["general"]}
    manifest = evaluated_project(tmp_path, tokenizer_dir, evals={**EVALS, "models": ["merged"]}, gates=[gate])
    result = barctl("apply", manifest, "--auto-approve")
    assert result.exit_code == 1
    assert "gate 'merged-is-perfect' failed on general: merged scored" in result.output
    assert "below the threshold 1.0000" in result.output and "Traceback" not in result.output
    assert "Evaluation (higher is better; 95% intervals)" in result.output  # the scores that failed it are shown
    entries = lock(manifest)
    assert {"experts.math.sft", "experts.code.sft", "merge", "router", "eval.merged"} <= entries.keys()
    assert "gates" not in entries and "export" not in entries
    assert not (tmp_path / "out" / "moe").exists()
    assert {n: a["action"] for n, a in plan_json(manifest).items() if a["action"] != "keep"} == {
        "gates": "create", "export": "create"}


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a built project; the store's artifacts (never written in place) are hard links."""
    def link_or_copy(src: str, dst: str) -> None:
        (os.link if f"{os.sep}store{os.sep}" in src else shutil.copy2)(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)
    return target / "bar.yaml"


def test_interval_gates_on_a_built_project_judge_the_tables_numbers(built, tmp_path):
    """Only the gates and the export run; the gates draw intervals from the stored rows and reach the
    verdicts, with the numbers, that the lock's scores and intervals (the table's) give."""
    manifest = copy_project(built[0].parent, tmp_path / "copy")
    document = yaml.safe_load(manifest.read_text())
    document["gates"] = [{"model": "own_expert", "at_least": "anchor", "intervals_apart": True},
                         {"model": "merged", "at_least": "own_expert", "keep": 0.8, "over": "anchor",
                          "tolerance": "ci95"},
                         {"model": "merged", "at_least": "anchor", "tolerance": "ci95"},
                         {"name": "unreachable", "model": "merged", "at_least": 1.0, "tolerance": "ci95",
                          "domains": ["general"]}]
    manifest.unlink()  # a hard link would write through to the original
    write_manifest(manifest, document)
    assert changed(plan_json(manifest)) == {"gates": "rebuild", "export": "rebuild"}
    entries = lock(manifest)
    gates = [dict(gate) for gate in load_recipe(manifest).gates]
    assert [g["name"] for g in gates[:2]] == ["own_expert > anchor (95% intervals apart) on math",
                                              "merged keeps 80% of own_expert's gain over anchor (within 95% "
                                              "intervals) on math"]
    expected = gate_failures(gates, eval_scores(entries), eval_intervals(entries))
    low, high = eval_intervals(entries)["merged"]["general"]
    assert f"gate 'unreachable' failed on general: merged scored {eval_scores(entries)['merged']['general']:.4f} " \
           f"[{low:.4f}, {high:.4f}], its 95% interval entirely below the threshold 1.0000" in expected
    result = barctl("apply", manifest, "--auto-approve")
    assert result.exit_code == 1 and "Traceback" not in result.output
    output = " ".join(result.output.split())
    assert all(" ".join(failure.split()) in output for failure in expected), (expected, result.output)
    assert output.count("gate '") == len(expected)


SCORES = {"anchor": {"math": 0.5, "code": 0.4, "average": 0.45},
          "experts.math": {"math": 0.7, "code": 0.3, "average": 0.5},
          "merged": {"math": 0.65, "code": 0.4, "average": 0.525}}


@pytest.mark.parametrize("gate, failures", [
    ({"model": "merged", "at_least": "anchor", "domains": ["math", "code", "average"]}, []),
    ({"model": "merged", "at_least": "own_expert", "domains": ["math"]},
     ["gate 'g' failed on math: merged scored 0.6500, below experts.math 0.7000"]),
    ({"model": "merged", "at_least": "own_expert", "domains": ["math"], "tolerance": 0.05}, []),
    ({"model": "merged", "at_least": 0.5, "domains": ["code", "average"]},
     ["gate 'g' failed on code: merged scored 0.4000, below the threshold 0.5000"]),
    ({"model": "experts.math", "at_least": "anchor", "domains": ["code"], "tolerance": 0.05},
     ["gate 'g' failed on code: experts.math scored 0.3000, below anchor 0.4000 - 0.05"]),
])
def test_gate_conditions(gate, failures):
    assert gate_failures([{"name": "g", "tolerance": 0, **gate}], SCORES) == failures


def test_gate_at_equality_passes_despite_float_noise():
    scores = {"merged": {"math": 0.1 + 0.2}, "anchor": {"math": 0.3}}
    assert gate_failures([{"name": "g", "model": "merged", "at_least": "anchor", "domains": ["math"],
                           "tolerance": 0}], scores) == []


@pytest.mark.parametrize("change, message", [
    ({"evals": {"domains": {"math": {"dataset": "math_evl", "metric": "math_answer"}}}},
     "unknown dataset 'math_evl' (did you mean 'math_eval'?)"),
    ({"evals": {"domains": {"math": {"dataset": "heldout", "metric": "math_answer"}}}},
     "dataset 'heldout' has format text; metric math_answer needs prompt"),
    ({"evals": {"domains": {"math": {"dataset": "math_eval", "metric": "accuracy"}}}}, "'accuracy' is not one of"),
    ({"gates": [{"model": "merged", "at_least": "anchor", "domains": ["mth"]}]},
     "unknown domain 'mth' (did you mean 'math'?)"),
    ({"gates": [{"model": "experts.maths", "at_least": "anchor"}]}, "unknown expert 'maths'"),
    ({"evals": {**EVALS, "models": ["merged"]}, "gates": [{"model": "merged", "at_least": "anchor"}]},
     "anchor is not evaluated: add 'anchor' to evals.models"),
    ({"evals": None, "gates": [{"model": "merged", "at_least": 0.5}]}, "gates compare evaluation results"),
])
def test_eval_and_gate_mistakes_are_reported_with_their_place(tmp_path, tokenizer_dir, change, message):
    manifest = evaluated_project(tmp_path, tokenizer_dir)
    document = {**yaml.safe_load(manifest.read_text()), **change}
    if document["evals"] is None:
        del document["evals"]
    write_manifest(manifest, document)
    result = barctl("validate", manifest)
    assert result.exit_code == 1 and message in result.output, result.output
    assert re.search(r"bar\.yaml:\d+:\d+: (evals|gates)", result.output) and "Traceback" not in result.output


def test_plan_names_a_missing_answer_column(tmp_path, tokenizer_dir):
    manifest = evaluated_project(tmp_path, tokenizer_dir)
    (tmp_path / "math_eval.jsonl").write_text(json.dumps({"prompt": "What is 1 + 1?", "solution": "2"}) + "\n")
    result = barctl("plan", manifest)
    assert result.exit_code == 1
    assert "column 'answer' is missing; columns are: prompt, solution" in result.output
