"""Fingerprints of what barctl reads from outside: model sources and datasets.

Local files are digested by content (cached by path, size and mtime); hub sources by id,
revision and the commit a branch resolves to (barctl.engine.hub); an installed package's model
file by content. Paths in fingerprints are relative to the project root, so keys do not depend
on where the project is checked out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from barctl.data.fingerprint import FingerprintCache, file_digest, fingerprint
from barctl.engine.hub import resolved_commit
from barctl.errors import BarctlError
from barctl.manifest import schema
from barctl.manifest.recipe import Recipe
from barctl.model.source import package_dir


class ProjectFingerprints:
    def __init__(self, recipe: Recipe, cache: FingerprintCache):
        self.recipe = recipe
        self.cache = cache

    def model(self, source: Mapping[str, Any]) -> Any:
        if "hub" in source:
            found = {"kind": "hub", "id": source["hub"], "revision": source.get("revision", "main")}
            return _with_commit(found, resolved_commit(source["hub"], source.get("revision"), "model"))
        if "random" in source:
            return {"kind": "random", "tokenizer": self.model(source["random"]["tokenizer"])}
        if "package" in source:
            located = package_dir(source["package"]) / source["file"]
            if not located.is_file():
                raise BarctlError(f"the package '{source['package']}' has no file {source['file']}")
            return {"kind": "file", "digest": file_digest(located, self.cache)}
        path = self.recipe.resolve(source["path"])
        if path.is_file():
            return {"kind": "file", "digest": file_digest(path, self.cache)}
        return {"kind": "files", "files": self._files(path)}

    def dataset(self, spec: Mapping[str, Any]) -> Any:
        absolute = dict(spec)
        if "path" in spec:
            absolute["path"] = str(self.recipe.resolve(spec["path"]))
        found = fingerprint(absolute, self.cache) | _reading(spec)
        if found["kind"] == "hub":
            return _with_commit(found, resolved_commit(spec["hub"], spec.get("revision"), "dataset"))
        if "files" in found:
            found = {**found, "files": {self._relative(Path(f)): d for f, d in found["files"].items()}}
        return found

    def lm_eval_task(self, domain: Mapping[str, Any]) -> Any:
        """An lm_eval domain's lm-eval version and, for a task of the project's own, its files
        (barctl.evaluate.lm_eval_tasks)."""
        from barctl.evaluate.lm_eval_tasks import fingerprint as task_fingerprint

        include_path = self.recipe.resolve(domain["include_path"]) if domain.get("include_path") else None
        return task_fingerprint(domain, include_path, self.recipe.root, self.cache)

    def _files(self, directory: Path) -> dict[str, str]:
        return {
            p.relative_to(directory).as_posix(): file_digest(p, self.cache)
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        }

    def _relative(self, path: Path) -> str:
        root = self.recipe.root
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _reading(spec: Mapping[str, Any]) -> dict[str, Any]:
    """How a spec reads its data, where that changes the rows: a hub subset or a split other than the default,
    a column mapping. Left out when unset, so the keys of projects that set none stay what they were."""
    reading: dict[str, Any] = {}
    if spec.get("hub"):
        if spec.get("subset"):
            reading["subset"] = spec["subset"]
        if spec.get("split") not in (None, schema.default("$defs", "dataset", "properties", "split")):
            reading["split"] = spec["split"]
    if spec.get("columns"):
        reading["columns"] = dict(sorted(spec["columns"].items()))
    return reading


def _with_commit(found: dict[str, Any], commit: str | None) -> dict[str, Any]:
    """A hub fingerprint with the commit its branch resolved to; a pinned revision already is one
    (adding it would change the keys of projects that pinned)."""
    return found if commit is None or commit == found["revision"] else {**found, "commit": commit}
