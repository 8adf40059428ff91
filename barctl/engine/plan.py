"""Diff the graph against the lockfile and the store: one action per node, with reasons.

Actions: create (not in the lock), rebuild (its key changed: the config fields, data,
inputs or kind version that changed are named), replace (rebuild on request), repair
(same key, but its artifact is missing or fails its digest), remove (in the lock, gone
from the manifest) and keep.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from barctl.engine.graph import Graph, Node
from barctl.errors import BarctlError

RUNS = ("create", "rebuild", "replace", "repair")
# Says why a recorded artifact cannot be used as is, or None when it is intact.
ArtifactCheck = Callable[[dict[str, Any]], "str | None"]
PLAN_FORMAT = 1


@dataclass
class Action:
    node_id: str
    kind: str
    action: str  # create | rebuild | replace | repair | remove | keep
    key: str | None
    reasons: list[str] = field(default_factory=list)

    @property
    def runs(self) -> bool:
        return self.action in RUNS


@dataclass
class Plan:
    manifest: str
    manifest_digest: str
    lock_digest: str
    actions: list[Action]
    targets: list[str] = field(default_factory=list)
    trainable: dict[str, int] = field(default_factory=dict)  # stage node -> trainable parameters
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)  # training node -> tokens, FLOPs (engine/cost.py)
    cost_total: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> estimated peak bytes (engine/memory.py)
    format: int = PLAN_FORMAT

    @property
    def to_run(self) -> list[Action]:
        return [a for a in self.actions if a.runs]

    @property
    def to_remove(self) -> list[Action]:
        return [a for a in self.actions if a.action == "remove"]

    @property
    def has_changes(self) -> bool:
        return bool(self.to_run or self.to_remove)

    def counts(self) -> dict[str, int]:
        return {
            "build": sum(a.action == "create" for a in self.actions),
            "rebuild": sum(a.action in ("rebuild", "replace", "repair") for a in self.actions),
            "remove": len(self.to_remove),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Plan:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != PLAN_FORMAT:
                raise ValueError("unknown plan format")
            actions = [Action(**a) for a in data.pop("actions")]
            return cls(actions=actions, **data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            raise BarctlError(f"{path} is not a saved barctl plan ({error})") from None


def make_plan(
    graph: Graph,
    entries: dict[str, dict[str, Any]],
    artifact_problem: ArtifactCheck,
    *,
    manifest: str,
    manifest_digest: str,
    lock_digest: str,
    targets: list[str] | None = None,
    replace: list[str] | None = None,
) -> Plan:
    """Decide every node's action; nodes outside `targets` and their ancestors are left out."""
    targets = list(targets or [])
    replace = list(replace or [])
    for node_id in targets + replace:
        if node_id not in graph:
            raise BarctlError(f"no node '{node_id}' in this manifest; nodes are: {', '.join(graph.ids)}")
    scope = set().union(*(graph.ancestors(t) for t in targets)) if targets else set(graph.ids)

    actions: dict[str, Action] = {}
    for node in graph:
        if node.id in scope:
            actions[node.id] = _decide(node, entries.get(node.id), actions, artifact_problem,
                                       node.id in replace)
    if not targets:
        for node_id, entry in entries.items():
            if node_id not in graph:
                actions[node_id] = Action(node_id, entry.get("kind", "?"), "remove", None,
                                          ["no longer in the manifest"])
    return Plan(manifest, manifest_digest, lock_digest, list(actions.values()), targets)


def _decide(node: Node, entry: dict | None, earlier: dict[str, Action], artifact_problem: ArtifactCheck,
            replace: bool) -> Action:
    if entry is None:
        return Action(node.id, node.kind, "create", node.key, ["not built yet"])
    if entry.get("key") != node.key:
        return Action(node.id, node.kind, "rebuild", node.key, change_reasons(node, entry, earlier))
    if replace:
        return Action(node.id, node.kind, "replace", node.key, ["replacement requested with --replace"])
    problem = artifact_problem(entry)
    if problem:
        return Action(node.id, node.kind, "repair", node.key, [problem])
    return Action(node.id, node.kind, "keep", node.key)


def change_reasons(node: Node, entry: dict[str, Any], earlier: dict[str, Action]) -> list[str]:
    """Why a node's key changed, in the user's terms."""
    reasons = []
    if entry.get("kind_version") != node.kind_version:
        reasons.append(f"barctl's {node.kind} runner changed (version {entry.get('kind_version')} -> "
                       f"{node.kind_version})")
    reasons += [f"{path}: {_show(old)} -> {_show(new)}"
                for path, old, new in diff_values(entry.get("config", {}), node.config)]
    old_data, new_data = entry.get("data", {}), node.data
    for name in sorted(set(old_data) | set(new_data)):
        if name not in old_data:
            reasons.append(f"now reads {name}")
        elif name not in new_data:
            reasons.append(f"no longer reads {name}")
        elif old_data[name] != new_data[name]:
            reasons.append(f"{name} changed" + _changed_files(old_data[name], new_data[name]))
    old_inputs = entry.get("inputs", {})
    for input_id in node.inputs:
        if input_id not in old_inputs:
            reasons.append(f"new input {input_id}")
        elif input_id in earlier and earlier[input_id].action in ("create", "rebuild", "replace"):
            reasons.append(f"input {input_id} is rebuilt")
        elif input_id in earlier and earlier[input_id].key != old_inputs[input_id]:
            reasons.append(f"input {input_id} changed")
    reasons += [f"input {gone} is gone" for gone in old_inputs if gone not in node.inputs]
    return reasons or ["its key changed"]


def diff_values(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two JSON-like values, as (dotted path, old, new)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            found += diff_values(old.get(key, _MISSING), new.get(key, _MISSING), sub)
        return found
    if old != new:
        return [(path, old, new)]
    return []


class _Missing:
    def __repr__(self) -> str:
        return "(unset)"


_MISSING = _Missing()


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(unset)"
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _changed_files(old: Any, new: Any) -> str:
    """Name the files whose content changed, when both fingerprints list files."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return ""
    old_files, new_files = old.get("files", {}), new.get("files", {})
    changed = sorted(f for f in set(old_files) | set(new_files) if old_files.get(f) != new_files.get(f))
    return f" ({', '.join(changed)})" if changed else ""
