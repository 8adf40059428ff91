"""Where barctl may write: the output directory and the lockfile stay inside the project,
clear of the manifest, the data, the source models and any directory barctl did not make.

The export replaces `output.dir` as a whole, so a wrong `output.dir` would delete the
user's files; these checks run when the manifest is loaded (validate, plan, apply),
before anything is built.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from barctl.errors import Issue
from barctl.manifest.schema import default
from barctl.manifest.yamlload import LoadedYaml

# Written into every output directory barctl creates: an existing directory is replaced only
# when it holds this file (or is empty).
OUTPUT_MARKER = ".barctl-output"
STATE_DIR = ".barctl"


def path_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    """Problems with `output.dir` and `lockfile`, each located at its field."""
    root = root.resolve()
    protected = _protected_paths(loaded, root)
    issues = []
    lockfile_name = loaded.data.get("lockfile", default("properties", "lockfile"))
    lockfile = (root / lockfile_name).resolve() if isinstance(lockfile_name, str) else None
    problem = lockfile and _lockfile_problem(lockfile, root, protected)
    if problem:
        issues.append(loaded.issue(("lockfile",), problem))
    output = loaded.data["output"]["dir"]
    if isinstance(output, str):
        if lockfile is not None:
            protected.setdefault(lockfile, "the lockfile")
        problem = _output_problem((root / output).resolve(), root, protected)
        if problem:
            issues.append(loaded.issue(("output", "dir"), problem))
    return issues


def output_dir_problem(target: Path) -> str | None:
    """Why barctl may not replace `target` (not made by barctl, not empty), or None."""
    if not target.exists() and not target.is_symlink():
        return None
    if not target.is_dir() or target.is_symlink():
        return f"{target} exists and is not a directory barctl made"
    if (target / OUTPUT_MARKER).is_file() or not any(target.iterdir()):
        return None
    return (f"{target} exists and was not made by barctl (it has no {OUTPUT_MARKER} file); the export "
            "replaces the whole directory, so choose another `output.dir` or empty this one")


def _output_problem(target: Path, root: Path, protected: dict[Path, str]) -> str | None:
    if target == root or target in root.parents:
        return "the output must be a directory of its own, not the project's"
    if root not in target.parents:
        return f"must be inside the project directory {root} (it resolves to {target})"
    state = root / STATE_DIR
    if target == state or state in target.parents:
        return f"the output cannot live inside {STATE_DIR}/"
    for path, what in protected.items():
        if path == target or target in path.parents:
            return f"the export replaces this directory, which would delete {what} ({_show(path, root)})"
        if path in target.parents:
            return f"lies inside {what} ({_show(path, root)}); give the output a directory of its own"
    return output_dir_problem(target)


def _lockfile_problem(lockfile: Path, root: Path, protected: dict[Path, str]) -> str | None:
    if root not in lockfile.parents:
        return f"must be inside the project directory {root} (it resolves to {lockfile})"
    state = root / STATE_DIR
    if state in lockfile.parents:
        return f"the lockfile is committed with the manifest; it cannot live inside {STATE_DIR}/"
    for path, what in protected.items():
        if path == lockfile:
            return f"is {what}; barctl would overwrite it"
        if path in lockfile.parents:
            return f"lies inside {what} ({_show(path, root)})"
    if lockfile.is_dir():
        return f"{_show(lockfile, root)} is a directory"
    return None


def _protected_paths(loaded: LoadedYaml, root: Path) -> dict[Path, str]:
    """The user's files barctl reads and must never write over: resolved path -> what it is."""
    data = loaded.data
    protected = {Path(loaded.filename).resolve(): "the manifest"}
    for name, spec in _mapping(data.get("datasets")).items():
        if isinstance(spec, dict) and isinstance(spec.get("path"), str):
            for path in _dataset_paths(root, spec["path"]):
                protected.setdefault(path, f"dataset '{name}'")
    base = _mapping(data.get("base"))
    for role in ("anchor", "pretrained"):
        for path in _source_paths(root, base.get(role)):
            protected.setdefault(path, f"the {role} model")
    for expert in _mapping(data.get("experts")).values():
        for stage in _mapping(expert).get("stages") or []:
            config_file = _mapping(_mapping(stage).get("launcher")).get("config_file")
            if isinstance(config_file, str):
                protected.setdefault((root / config_file).resolve(), "a launcher config file")
    return protected


def _dataset_paths(root: Path, pattern: str) -> list[Path]:
    literal = (root / pattern).resolve()
    matches = [Path(p).resolve() for p in glob.glob(str(root / pattern), recursive=True)]
    return [literal, *matches] if literal.exists() or not matches else matches


def _source_paths(root: Path, source: Any) -> list[Path]:
    """The local paths of a model source (a random anchor's tokenizer too)."""
    if not isinstance(source, dict):
        return []
    paths = [(root / source["path"]).resolve()] if isinstance(source.get("path"), str) else []
    return paths + _source_paths(root, _mapping(source.get("random")).get("tokenizer"))


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _show(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
