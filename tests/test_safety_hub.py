"""Hub sources named by a branch are keyed by the commit the branch points at when planning:
a moved branch changes the key (a rebuild), a pinned commit keeps its key."""

from __future__ import annotations

import pytest

from barctl.errors import BarctlError
from tests.projects import make_project, plan_json, tiny_manifest

A, B = "a" * 40, "b" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _point(cache, kind: str, repo: str, commit: str, branch: str = "main") -> None:
    ref = cache / f"{kind}s--{repo.replace('/', '--')}" / "refs" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


def _project(tmp_path, tokenizer_dir, revision: str | None = None, reading: dict | None = None):
    chat = {"hub": "org/chat", "format": "messages", **({"revision": revision} if revision else {}), **(reading or {})}
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]}}
    return make_project(tmp_path / "project", tokenizer_dir,
                        tiny_manifest({"math": {"stages": [stage]}}, datasets={"chat": chat}))


def _keys(manifest) -> dict[str, str]:
    return {node: action["key"] for node, action in plan_json(manifest).items()}


def test_a_moved_branch_changes_the_key_of_what_reads_it(tmp_path, tokenizer_dir, hub_cache):
    manifest = _project(tmp_path, tokenizer_dir)
    _point(hub_cache, "dataset", "org/chat", A)
    at_a = _keys(manifest)
    _point(hub_cache, "dataset", "org/chat", B)
    at_b = _keys(manifest)
    assert at_a["experts.math.sft"] != at_b["experts.math.sft"]
    assert at_a["base"] == at_b["base"] and at_a["experts.math.branch"] == at_b["experts.math.branch"]
    _point(hub_cache, "dataset", "org/chat", A)
    assert _keys(manifest) == at_a  # the commit, not the time of planning, decides


def test_a_pinned_commit_keeps_its_key_whatever_the_branch_does(tmp_path, tokenizer_dir, hub_cache):
    manifest = _project(tmp_path, tokenizer_dir, revision=A)
    _point(hub_cache, "dataset", "org/chat", B)
    pinned = _keys(manifest)
    _point(hub_cache, "dataset", "org/chat", A)
    assert _keys(manifest) == pinned


def test_model_fingerprints_carry_the_commit_and_base_builds_exactly_it(tmp_path, hub_cache):
    from barctl.data.fingerprint import FingerprintCache
    from barctl.engine.hub import at_commit, resolved_commit
    from barctl.engine.input_fingerprints import ProjectFingerprints

    _point(hub_cache, "model", "org/anchor", A)
    fingerprints = ProjectFingerprints(None, FingerprintCache(tmp_path / "digests.json"))
    found = fingerprints.model({"hub": "org/anchor"})
    assert found == {"kind": "hub", "id": "org/anchor", "revision": "main", "commit": A}
    assert at_commit({"hub": "org/anchor"}, found) == {"hub": "org/anchor", "revision": A}
    assert fingerprints.model({"hub": "org/anchor", "revision": B}) == {
        "kind": "hub", "id": "org/anchor", "revision": B}
    assert resolved_commit("org/unknown", "main") is None  # offline and not cached: keyed by the branch name


def test_runners_read_hub_datasets_at_the_commit_they_were_keyed_with(tmp_path, tokenizer_dir, hub_cache):
    from barctl.engine.hub import recipe_at_commits
    from barctl.manifest.recipe import load_recipe

    recipe = load_recipe(_project(tmp_path, tokenizer_dir))
    pinned = recipe_at_commits(recipe, {"chat": {"kind": "hub", "id": "org/chat", "revision": "main", "commit": A}})
    assert pinned.dataset_spec("chat")["revision"] == A
    assert recipe.dataset_spec("chat").get("revision", "main") == "main"  # the recipe itself is untouched


def test_launched_ranks_read_the_context_apply_pinned_and_resolve_nothing(tmp_path, tokenizer_dir, hub_cache,
                                                                          monkeypatch):
    import barctl.engine.hub
    import barctl.engine.input_fingerprints
    from barctl.engine.hub import recipe_at_commits
    from barctl.engine.project import Project
    from barctl.runners import NodeContext
    from barctl.training.launch import context_path, write_context
    from barctl.training.worker import node_context

    manifest = _project(tmp_path, tokenizer_dir)
    _point(hub_cache, "dataset", "org/chat", A)
    project = Project.load(manifest)
    node = project.graph["experts.math.sft"]
    inputs = {i: project.store.root / i for i in node.inputs}
    upstream = {"experts.math.branch": {"key": project.graph["experts.math.branch"].key}}
    # as apply builds a launched stage's context
    write_context(NodeContext(recipe_at_commits(project.recipe, node.data), node, inputs, tmp_path / "staged",
                              project.store.work_dir(node.id), upstream))
    _point(hub_cache, "dataset", "org/chat", B)  # the branch moves while the stage runs

    def refuse(*args, **kwargs):
        raise AssertionError("a launched rank resolved a hub branch or hashed a dataset")

    monkeypatch.setattr(barctl.engine.hub, "resolved_commit", refuse)
    monkeypatch.setattr(barctl.engine.input_fingerprints, "resolved_commit", refuse)
    monkeypatch.setattr(barctl.engine.input_fingerprints.ProjectFingerprints, "dataset", refuse)
    ctx = node_context(manifest, node.id, main_process=False)
    assert ctx.node == node and ctx.inputs == inputs and ctx.upstream == upstream
    assert ctx.recipe.dataset_spec("chat")["revision"] == A
    context_path(ctx.recipe, node.id).unlink()
    with pytest.raises(BarctlError, match="cannot read the context apply hands its launched ranks"):
        node_context(manifest, node.id, main_process=False)



@pytest.mark.parametrize("reading", [{"subset": "en"}, {"split": "validation"}, {"columns": {"messages": "chat"}}])
def test_what_a_spec_reads_is_in_the_key_and_defaults_keep_it(tmp_path, tokenizer_dir, hub_cache, reading):
    """Another subset, split or column mapping reads other rows, so the stages that read them rebuild; the
    default split and no mapping leave the key as it was before these fields were keyed."""
    _point(hub_cache, "dataset", "org/chat", A)
    plain = _keys(_project(tmp_path / "plain", tokenizer_dir))
    assert _keys(_project(tmp_path / "default", tokenizer_dir, reading={"split": "train"})) == plain
    changed = _keys(_project(tmp_path / "changed", tokenizer_dir, reading=reading))
    assert changed["experts.math.sft"] != plain["experts.math.sft"]
    assert changed["experts.math.branch"] == plain["experts.math.branch"]
