"""Run a plan's nodes in order; record each finished node in the lockfile at once.

A node writes into a staging directory; only when it finished is its artifact moved
into the store and its entry written (atomically) to the lockfile. A killed apply so
loses only the node that was running, and the next plan shows it again.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from barctl import __version__
from barctl.engine.hub import recipe_at_commits
from barctl.engine.plan import Action, Plan
from barctl.engine.project import Project
from barctl.engine.remote import RemoteStore
from barctl.engine.store import Artifact, tree_digest
from barctl.errors import BarctlError, NodeFailed
from barctl.logs import route_library_logs
from barctl.rewards.sandbox import UNISOLATED_ENV
from barctl.runners import NodeContext, has_runner, runner_for

# Never pulled: the gates are checked on this machine, the export is written to output.dir here.
BUILT_HERE = ("gates", "export")


class Reporter(Protocol):
    def start(self, action: Action) -> None: ...

    def say(self, action: Action, message: str) -> None: ...

    def note(self, action: Action, message: str) -> None: ...

    def done(self, action: Action, entry: dict[str, Any]) -> None: ...

    def removed(self, action: Action) -> None: ...


@dataclass
class ApplyResult:
    built: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def check_plan_is_current(project: Project, plan: Plan) -> None:
    """Refuse a saved plan when the manifest, the lockfile, data or models changed since."""
    if plan.manifest_digest != project.manifest_digest:
        raise BarctlError("stale plan: the manifest changed since the plan was made; run barctl plan again")
    if plan.lock_digest != project.lockfile.digest():
        raise BarctlError("stale plan: the lockfile changed since the plan was made "
                          "(another apply ran?); run barctl plan again")
    for action in plan.to_run:
        if action.node_id not in project.graph or project.graph[action.node_id].key != action.key:
            raise BarctlError(f"stale plan: {action.node_id} is no longer what the plan built "
                              "(its data or models changed); run barctl plan again")


def check_runnable(plan: Plan) -> None:
    missing = [a.node_id for a in plan.to_run if not has_runner(a.kind)]
    if missing:
        raise BarctlError(
            "this barctl version cannot run these nodes yet (their stage kinds have no runner): "
            + ", ".join(missing)
        )


def apply_plan(project: Project, plan: Plan, reporter: Reporter, push: bool = False) -> ApplyResult:
    """Run every node the plan says, then drop removed nodes from the lockfile.

    Before a node runs, the artifacts it reads are checked from their content; a damaged
    one is rebuilt first (a repair), so nothing damaged goes into a model or the output.
    With a remote store, a node whose key it holds is pulled (content-checked) instead of
    built; with `push`, what is built is uploaded to it.
    """
    check_runnable(plan)
    route_library_logs()
    os.environ[UNISOLATED_ENV] = "1" if project.recipe.sandbox_isolation == "best_effort" else "0"
    project.store.clear_staging()
    result = ApplyResult()
    lockfile = project.lockfile
    verified: set[str] = set()
    for action in plan.to_run:
        _repair_damaged_inputs(project, action.node_id, verified, reporter, result)
        _build(project, action, reporter, result, push)
        verified.add(action.node_id)
    for action in plan.to_remove:
        lockfile.entries.pop(action.node_id, None)
        lockfile.write(project.graph.ids)
        result.removed.append(action.node_id)
        reporter.removed(action)
    return result


def _build(project: Project, action: Action, reporter: Reporter, result: ApplyResult, push: bool = False) -> None:
    reporter.start(action)
    say = lambda message: reporter.say(action, message)  # noqa: E731
    note = lambda message: reporter.note(action, message)  # noqa: E731
    remote = project.remote if action.kind not in BUILT_HERE else None
    entry = _pull(project, action, remote, say) if remote is not None else None
    if entry is None:
        entry = _run_node(project, action, say, note)
        if remote is not None and push and remote.push(_key(action), project.store.root / entry["artifact"]["path"],
                                                       entry):
            say(f"pushed to {remote.url}")
    project.lockfile.entries[action.node_id] = entry
    project.lockfile.write(project.graph.ids)
    (result.built if action.action == "create" else result.rebuilt).append(action.node_id)
    reporter.done(action, entry)


def _pull(project: Project, action: Action, remote: RemoteStore, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The node's entry when the remote holds its key and the artifact matches the digest pushed with it."""
    key = _key(action)
    recorded = remote.entry(key)
    if recorded is None:
        return None
    store = project.store
    with store.staging(key) as staged:
        remote.pull(key, staged)
        digest, _, _ = tree_digest(staged, store.cache, trust_cache=False)
        if digest != (recorded.get("artifact") or {}).get("digest"):
            say(f"the artifact in {remote.url} fails its digest; building it here instead")
            return None
        artifact = store.commit(staged, key)
    say(f"pulled from {remote.url}")
    entry = _entry(project, action.node_id, artifact, {"seconds": 0, **(recorded.get("metrics") or {})})
    return {**entry, "built_with": recorded.get("built_with", entry["built_with"]),
            "built_at": recorded.get("built_at", entry["built_at"]), "pulled_from": remote.url}


def _key(action: Action) -> str:
    """The key of a node to build (only a removal has none)."""
    if action.key is None:
        raise BarctlError(f"{action.node_id}: nothing to build for a {action.action} action")
    return action.key


def _repair_damaged_inputs(project: Project, node_id: str, verified: set[str], reporter: Reporter,
                           result: ApplyResult) -> None:
    """Check every input of `node_id` from its content; rebuild (and first check the inputs of) a damaged one."""
    for input_id in project.graph[node_id].inputs:
        if input_id in verified:
            continue
        problem = project.store.verify(project.lockfile.entries[input_id])
        if problem:
            _repair_damaged_inputs(project, input_id, verified, reporter, result)
            node = project.graph[input_id]
            _build(project, Action(input_id, node.kind, "repair", node.key, [problem]), reporter, result)
        verified.add(input_id)


def _run_node(project: Project, action: Action, say: Callable[[str], None],
              note: Callable[[str], None]) -> dict[str, Any]:
    node = project.graph[action.node_id]
    store, entries = project.store, project.lockfile.entries
    inputs = {i: store.root / entries[i]["artifact"]["path"] for i in node.inputs}
    upstream = {i: entries[i] for i in sorted(project.graph.ancestors(node.id) - {node.id})}
    started = time.monotonic()
    with store.staging(node.key) as staged:
        keyed_with = {name: fp for entry in upstream.values() for name, fp in (entry.get("data") or {}).items()}
        recipe = recipe_at_commits(project.recipe, {**keyed_with, **node.data})  # hub data as it was keyed
        context = NodeContext(recipe, node, inputs, staged, store.work_dir(node.id), upstream, say, note)
        try:
            metrics = runner_for(node.kind)(context)
        except BarctlError as error:
            raise NodeFailed(node.id, str(error)) from None
        except Exception as error:  # a bug or a library failure: keep the traceback for the user
            log = _write_log(store.state_dir, node.id)
            raise NodeFailed(node.id, f"{type(error).__name__}: {error} (traceback in {log})") from None
        if node.kind == "export":
            artifact = store.publish(staged, project.recipe.output_dir)
        else:
            artifact = store.commit(staged, node.key)
    metrics["seconds"] = round(time.monotonic() - started, 2)
    return _entry(project, node.id, artifact, metrics)


def _entry(project: Project, node_id: str, artifact: Artifact, metrics: dict[str, Any]) -> dict[str, Any]:
    node = project.graph[node_id]
    return {
        "kind": node.kind,
        "kind_version": node.kind_version,
        "key": node.key,
        "inputs": {i: project.graph[i].key for i in node.inputs},
        "config": node.config,
        "data": node.data,
        "artifact": artifact.to_dict(),
        "metrics": metrics,
        "built_with": library_versions(),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def library_versions() -> dict[str, str]:
    versions = {"barctl": __version__}
    for name in ("torch", "transformers", "trl"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _write_log(state_dir: Path, node_id: str) -> Path:
    log = state_dir / "logs" / f"{node_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(traceback.format_exc(), encoding="utf-8")
    return log
