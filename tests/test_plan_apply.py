"""Plan semantics end to end on a tiny random anchor: create, keep, rebuild, add, remove,
repair, targets, replacement, saved and stale plans, and the output's equivalence."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.projects import apply, barctl, changed, make_project, plan_json, tiny_manifest, write_manifest

ALL_NODES = ["base", "experts.math.branch", "experts.code.branch", "merge", "router", "export"]


@pytest.fixture
def built(tmp_path, tokenizer_dir):
    """A tiny project, applied once."""
    manifest = make_project(tmp_path / "project", tokenizer_dir)
    apply(manifest)
    return manifest


def test_fresh_project_plans_every_node_as_create(tmp_path, tokenizer_dir):
    manifest = make_project(tmp_path, tokenizer_dir)
    actions = plan_json(manifest)
    assert list(actions) == ALL_NODES
    assert {a["action"] for a in actions.values()} == {"create"}
    result = barctl("plan", manifest)
    assert "Plan: 6 to build, 0 to rebuild, 0 to remove." in result.output
    assert "+ base" in result.output
    assert barctl("plan", manifest, "--detailed-exitcode").exit_code == 2


def test_apply_then_plan_shows_no_changes_and_output_equals_the_anchor(built):
    result = barctl("plan", built, "--detailed-exitcode")
    assert result.exit_code == 0, result.output
    assert "No changes. The built artifacts match the manifest." in result.output

    from transformers import AutoModelForCausalLM

    root = built.parent
    moe = AutoModelForCausalLM.from_pretrained(root / "out" / "moe")
    assert moe.config.model_type == "mixtral"
    assert moe.config.num_local_experts == 3 and moe.config.num_experts_per_tok == 3
    lock = json.loads(barctl("show", built, "--json").output)
    anchor = AutoModelForCausalLM.from_pretrained(root / lock["base"]["artifact"]["path"] / "anchor")
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, anchor(ids).logits, atol=1e-5, rtol=1e-5)
    card = (root / "out" / "moe" / "README.md").read_text()
    assert "experts math, code" in card and "version: 1" in card


def test_lock_records_configs_digests_metrics_and_versions(built):
    lock = json.loads(barctl("show", built, "--json").output)
    assert list(lock) == ALL_NODES
    merge = lock["merge"]
    assert merge["config"]["experts"] == ["math", "code"]
    assert merge["artifact"]["digest"].startswith("sha256:")
    assert set(merge["built_with"]) == {"barctl", "torch", "transformers", "trl"}
    assert merge["inputs"]["experts.math.branch"] == lock["experts.math.branch"]["key"]
    assert lock["export"]["artifact"]["path"] == "out/moe"
    assert "generated" in lock["export"]["metrics"]["smoke_test"]


def test_changing_one_expert_rebuilds_it_and_the_merge_only(built):
    manifest = tiny_manifest({"math": {"seed": 7}, "code": {}})
    write_manifest(built, manifest)
    actions = plan_json(built)
    assert changed(actions) == {"experts.math.branch": "rebuild", "merge": "rebuild", "router": "rebuild",
                                "export": "rebuild"}
    assert "seed: 0 -> 7" in actions["experts.math.branch"]["reasons"]
    assert "input experts.math.branch is rebuilt" in actions["merge"]["reasons"]
    apply(built)
    assert changed(plan_json(built)) == {}


def test_adding_and_removing_an_expert(built):
    write_manifest(built, tiny_manifest({"math": {}, "code": {}, "tools": {}}))
    actions = plan_json(built)
    assert changed(actions) == {"experts.tools.branch": "create", "merge": "rebuild", "router": "rebuild",
                                "export": "rebuild"}
    assert any(r.startswith("experts: ") and "tools" in r for r in actions["merge"]["reasons"])
    assert "new input experts.tools.branch" in actions["merge"]["reasons"]

    write_manifest(built, tiny_manifest({"math": {}}))
    actions = plan_json(built)
    assert changed(actions) == {"experts.code.branch": "remove", "merge": "rebuild", "router": "rebuild",
                                "export": "rebuild"}
    assert "input experts.code.branch is gone" in actions["merge"]["reasons"]
    apply(built)
    lock = json.loads(barctl("show", built, "--json").output)
    assert "experts.code.branch" not in lock
    assert changed(plan_json(built)) == {}


def test_missing_or_corrupt_artifacts_are_repaired(built):
    root = built.parent
    lock = json.loads(barctl("show", built, "--json").output)
    shutil.rmtree(root / lock["experts.code.branch"]["artifact"]["path"])
    weights = next((root / lock["merge"]["artifact"]["path"]).glob("*.safetensors"))
    with weights.open("r+b") as handle:  # flip bytes inside a tensor: same size, new content
        handle.seek(-16, 2)
        handle.write(b"\x00" * 16)
    actions = plan_json(built)
    assert changed(actions) == {"experts.code.branch": "repair", "merge": "repair"}
    assert "missing" in actions["experts.code.branch"]["reasons"][0]
    assert "fails its digest" in actions["merge"]["reasons"][0]
    apply(built)
    assert changed(plan_json(built)) == {}


def test_deleted_output_is_repaired(built):
    shutil.rmtree(built.parent / "out" / "moe")
    assert changed(plan_json(built)) == {"export": "repair"}


def test_target_limits_the_plan_to_a_node_and_its_dependencies(tmp_path, tokenizer_dir):
    manifest = make_project(tmp_path, tokenizer_dir)
    actions = plan_json(manifest, "--target", "experts.math.branch")
    assert list(actions) == ["base", "experts.math.branch"]
    apply(manifest, "--target", "experts.math.branch")
    assert changed(plan_json(manifest)) == {"experts.code.branch": "create", "merge": "create",
                                           "router": "create", "export": "create"}
    result = barctl("plan", manifest, "--target", "nope")
    assert result.exit_code == 1 and "no node 'nope'" in result.output


def test_replace_forces_one_rebuild(built):
    actions = plan_json(built, "--replace", "merge")
    assert changed(actions) == {"merge": "replace"}
    assert actions["merge"]["reasons"] == ["replacement requested with --replace"]


def test_saved_plan_runs_exactly_and_refuses_when_stale(built, tmp_path):
    write_manifest(built, tiny_manifest({"math": {"seed": 3}, "code": {}}))
    saved = tmp_path / "plan.json"
    assert barctl("plan", built, "--out", saved).exit_code == 0
    result = barctl("apply", saved)
    assert result.exit_code == 0, result.output
    assert "Apply complete! 0 built, 4 rebuilt, 0 removed." in result.output

    stale = barctl("apply", saved)  # the lockfile has changed since that plan
    assert stale.exit_code == 1 and "stale plan" in stale.output

    write_manifest(built, tiny_manifest({"math": {"seed": 4}, "code": {}}))
    barctl("plan", built, "--out", saved)
    write_manifest(built, tiny_manifest({"math": {"seed": 5}, "code": {}}))
    stale = barctl("apply", saved)
    assert stale.exit_code == 1 and "the manifest changed" in stale.output


def test_apply_without_approval_outside_a_terminal_is_refused(tmp_path, tokenizer_dir):
    manifest = make_project(tmp_path, tokenizer_dir)
    result = barctl("apply", manifest)
    assert result.exit_code == 1 and "--auto-approve" in result.output
    assert not (tmp_path / "barctl.lock").exists()


def test_a_second_apply_is_refused_while_the_state_is_locked(built):
    from barctl.engine.lock import StateLock

    holder = StateLock(built.parent / ".barctl")
    info = holder.acquire("barctl apply (another one)")
    result = barctl("apply", built, "--auto-approve")
    assert result.exit_code == 1
    assert "locked by barctl apply (another one)" in result.output and f"pid {info['pid']}" in result.output
    unlock = barctl("force-unlock", info["id"], "-C", built.parent)  # refused: the holder is alive
    assert unlock.exit_code == 1 and "does not take a live lock" in unlock.output
    holder.release()
    assert barctl("apply", built, "--auto-approve").exit_code == 0


def test_olmo2_anchor_becomes_a_flex_olmo_moe_equal_to_the_anchor(tmp_path, tokenizer_dir):
    from transformers import AutoModelForCausalLM

    manifest = tiny_manifest()
    manifest["base"]["anchor"] = json.loads(json.dumps(manifest["base"]["anchor"]))
    manifest["base"]["anchor"]["random"]["family"] = "olmo2"
    manifest["output"]["architecture"] = "flex_olmo"
    path = make_project(tmp_path, tokenizer_dir, manifest)
    apply(path)
    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "moe")
    assert type(moe).__name__ == "FlexOlmoForCausalLM"
    lock = json.loads(barctl("show", path, "--json").output)
    anchor = AutoModelForCausalLM.from_pretrained(tmp_path / lock["base"]["artifact"]["path"] / "anchor")
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, anchor(ids).logits, atol=1e-5, rtol=1e-5)

    manifest["output"]["architecture"] = "mixtral"
    write_manifest(path, manifest)
    refused = barctl("plan", path)
    assert refused.exit_code == 1 and "base.anchor" in refused.output


def test_plan_shows_each_stage_trainable_parameter_count(tmp_path, tokenizer_dir):
    (tmp_path / "text.jsonl").write_text('{"text": "two plus two is four"}\n')
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    mix = lambda name: {"sources": [{"dataset": name, "count": 2}]}  # noqa: E731
    manifest = tiny_manifest(
        {"math": {"stages": [{"kind": "midtrain", "mix": mix("text")}, {"kind": "sft", "mix": mix("chat")}]}},
        datasets={"text": {"path": "text.jsonl", "format": "text"},
                  "chat": {"path": "chat.jsonl", "format": "messages"}},
    )
    path = make_project(tmp_path, tokenizer_dir, manifest)
    plan = json.loads(barctl("plan", path, "--json").output)
    hidden, inter, layers, vocab = 32, 64, 2, 300
    expert_and_router = layers * 3 * hidden * inter + layers * hidden  # router row 1; row 0 is the anchor's
    assert plan["trainable"]["experts.math.midtrain"] == expert_and_router
    assert plan["trainable"]["experts.math.sft"] == expert_and_router + 2 * vocab * hidden  # untied head
    assert f"# trains {expert_and_router:,} parameters" in barctl("plan", path).output
