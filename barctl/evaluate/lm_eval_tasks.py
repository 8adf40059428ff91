"""lm-evaluation-harness tasks as evaluation domains: where a task's files are, what keys it, what plan refuses.

torch-free: plan finds the task and digests its files without running anything. A domain with an
`include_path` names a task of that folder (lm-eval's own YAML index of it); without one, a task that
ships with lm-eval, whose names are indexed once per lm-eval version into the project's state folder
(indexing all of lm-eval's tasks takes seconds to a minute).

A task's key covers the lm-eval version, and for a local task the files that define it: its YAML, the
YAMLs it includes, the Python files beside them (its `!function`s) and the data files named in
`dataset_kwargs.data_files`. A relative data file is read from the task YAML's folder, so that neither
keys nor results depend on the folder barctl runs in.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from barctl.data.fingerprint import FingerprintCache, file_digest
from barctl.errors import Issue
from barctl.manifest.recipe import Recipe

PACKAGE = "lm_eval"
EXTRA_HINT = "the lm_eval metric needs lm-evaluation-harness, which is not installed: pip install 'barctl[lm_eval]'"


def version() -> str | None:
    """The installed lm-eval's version; None when it is not installed."""
    if importlib.util.find_spec(PACKAGE) is None:
        return None
    return importlib.metadata.version("lm_eval")


def task_yaml(task: str, include_path: Path) -> Path | None:
    """The YAML that defines `task` (a task or group) in `include_path`; None when none does."""
    from lm_eval.tasks._index import TaskIndex

    entry = TaskIndex.build([include_path]).get(task)
    return None if entry is None else entry.yaml_path


def builtin_tasks(state_dir: Path) -> set[str]:
    """The names (tasks, groups, tags) of the tasks that ship with the installed lm-eval, indexed once."""
    cache = state_dir / f"lm_eval-tasks-{version()}.json"
    if cache.is_file():
        return set(json.loads(cache.read_text()))
    import lm_eval.tasks
    from lm_eval.tasks._index import TaskIndex

    names = sorted(TaskIndex.build([Path(lm_eval.tasks.__file__).parent]))
    state_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(names))
    return set(names)


def task_issues(domain: Mapping[str, Any], include_path: Path | None, state_dir: Path) -> list[tuple[str, str]]:
    """(field, problem) for a domain whose task lm-eval cannot run: not installed, no such task or folder."""
    if version() is None:
        return [("metric", EXTRA_HINT)]
    task = domain["task"]
    if include_path is None:
        found = task in builtin_tasks(state_dir)
        return [] if found else [("task", f"lm-eval {version()} has no task named {task!r}; a task of your own "
                                          "needs include_path: the folder of its YAML")]
    if not include_path.is_dir():
        return [("include_path", f"no folder at {include_path}")]
    yaml_path = task_yaml(task, include_path)
    if yaml_path is None:
        return [("task", f"no YAML in {include_path} defines a task or group named {task!r}")]
    missing = [str(path) for path in data_files(yaml_path).values() if not path.is_file()]
    return [("task", f"its data file {path} does not exist") for path in missing]


def data_files(yaml_path: Path) -> dict[str, Path]:
    """The task's `dataset_kwargs.data_files` (split -> file), relative ones resolved from its YAML's folder."""
    from lm_eval.tasks._yaml_loader import load_yaml

    files = (load_yaml(yaml_path, resolve_func=False).get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return {}
    if not isinstance(files, dict):
        files = {"": files}
    located = {}
    for split, named in files.items():
        for number, name in enumerate([named] if isinstance(named, str) else named):
            located[f"{split}[{number}]" if split else str(number)] = yaml_path.parent / name
    return located


def task_config(yaml_path: Path) -> dict[str, Any] | None:
    """The task's full config with its relative data files made absolute, for lm-eval to load as given;
    None when there is nothing to resolve (lm-eval then loads the task by name)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(yaml_path, resolve_func=True)
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if "task" not in config or isinstance(config["task"], list) or files is None:
        return None

    def resolve(named: str | list[str]) -> str | list[str]:
        return str(yaml_path.parent / named) if isinstance(named, str) else [str(yaml_path.parent / n) for n in named]

    resolved = {split: resolve(named) for split, named in files.items()} if isinstance(files, dict) else resolve(files)
    return {**config, "dataset_kwargs": {**config["dataset_kwargs"], "data_files": resolved}}


def fingerprint(domain: Mapping[str, Any], include_path: Path | None, root: Path, cache: FingerprintCache) -> dict:
    """What keys an lm_eval domain's data: the lm-eval version and, for a local task, its files' digests."""
    found: dict[str, Any] = {"kind": "lm_eval", "version": version()}
    if include_path is None or found["version"] is None or not include_path.is_dir():
        return found
    yaml_path = task_yaml(domain["task"], include_path)
    if yaml_path is None:
        return found
    files = _definition_files(yaml_path) | {p.resolve() for p in data_files(yaml_path).values() if p.is_file()}

    def relative(path: Path) -> str:
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    return {**found, "files": {relative(path): file_digest(path, cache) for path in sorted(files)}}


def _definition_files(yaml_path: Path) -> set[Path]:
    """The YAML, the YAMLs it includes (recursively), and the Python files in their folders."""
    from lm_eval.tasks._yaml_loader import load_yaml

    seen: set[Path] = set()
    pending = [yaml_path.resolve()]
    while pending:
        path = pending.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        includes = load_yaml(path, resolve_func=False, recursive=False).get("include") or []
        pending += [(path.parent / name).resolve() for name in ([includes] if isinstance(includes, str) else includes)]
    return seen | {py.resolve() for path in seen for py in path.parent.glob("*.py")}


def plan_issues(recipe: Recipe) -> list[Issue]:
    """Every lm_eval domain whose task cannot run, at its YAML location."""
    issues = []
    for name, domain in recipe.evals.get("domains", {}).items():
        if domain["metric"] == "lm_eval":
            include_path = recipe.resolve(domain["include_path"]) if domain.get("include_path") else None
            issues += [recipe.issue(("evals", "domains", name, field), problem)
                       for field, problem in task_issues(domain, include_path, recipe.state_dir)]
    return issues
