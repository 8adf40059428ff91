"""The artifact store: one directory per node key under `.barctl/store/`.

A node writes into a staging directory; only a finished artifact is moved into place
(a rename), so the store never holds half an artifact. Artifacts are digested file by
file from their content. Planning checks them quickly, trusting digests cached by
(path, size, mtime), like `git status`; apply re-reads the content of every artifact
before a node uses it, so what goes into a model or the output is never trusted blindly.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barctl.data.fingerprint import FingerprintCache, file_digest
from barctl.errors import BarctlError
from barctl.manifest.paths import OUTPUT_MARKER, output_dir_problem
from barctl.model.hfdir import safetensors_problem


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the project root
    digest: str
    size: int
    files: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size, "files": self.files}


class Store:
    def __init__(self, root: Path):
        self.root = root  # the project root: the manifest's directory
        self.state_dir = root / ".barctl"
        self.objects = self.state_dir / "store"
        self.cache = FingerprintCache(self.state_dir / "cache" / "digests.json")
        self.tokenized = self.state_dir / "cache" / "tokenized"  # stages' prepared datasets (barctl.training.tokenized)

    def path_for(self, key: str) -> Path:
        return self.objects / key[:2] / key

    def work_dir(self, node_id: str) -> Path:
        """A node's scratch space that survives a killed run (stage checkpoints to resume from)."""
        return self.state_dir / "work" / node_id

    @contextmanager
    def staging(self, key: str) -> Iterator[Path]:
        """A fresh directory to build an artifact in; removed if the build fails."""
        tmp = self.state_dir / "tmp" / f"{key[:16]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path, key: str) -> Artifact:
        """Move a finished artifact into the store, replacing a damaged one with that key.

        Its safetensors files must be whole: a truncated model never enters the store.
        """
        for weights in sorted(staged.rglob("*.safetensors")):
            problem = safetensors_problem(weights)
            if problem:
                raise BarctlError(problem.replace(str(staged), "the artifact"))
        final = self.path_for(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            trash = self.state_dir / "tmp" / f"trash-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        staged.rename(final)
        return self.describe(final)

    def publish(self, staged: Path, target: Path) -> Artifact:
        """Move a finished artifact to a declared location outside the store (the output).

        Only a directory barctl made (it holds the marker file) or an empty one is replaced.
        """
        problem = output_dir_problem(target)
        if problem:
            raise BarctlError(problem)
        (staged / OUTPUT_MARKER).write_text("Made by barctl: `barctl apply` replaces this directory.\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            shutil.move(str(staged), str(target))
            shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.move(str(staged), str(target))
        return self.describe(target)

    def describe(self, directory: Path) -> Artifact:
        """The artifact at `directory`, digested from its content."""
        digest, size, files = tree_digest(directory, self.cache, trust_cache=False)
        self.cache.save()
        return Artifact(str(directory.relative_to(self.root)) if directory.is_relative_to(self.root)
                        else str(directory), digest, size, files)

    def problem_with(self, entry: dict[str, Any]) -> str | None:
        """Why a lock entry's artifact is not usable as is, or None when it looks intact.

        A quick check for planning: file digests come from the (path, size, mtime) cache.
        """
        return self._problem(entry, trust_cache=True)

    def verify(self, entry: dict[str, Any]) -> str | None:
        """Like `problem_with`, reading every byte: the check before an artifact is used.

        The digests it reads refresh the cache, so the next plan sees a damaged artifact too.
        """
        problem = self._problem(entry, trust_cache=False)
        self.cache.save()
        return problem

    def _problem(self, entry: dict[str, Any], *, trust_cache: bool) -> str | None:
        artifact = entry.get("artifact") or {}
        if "path" not in artifact:
            return "the lockfile records no artifact for it"
        directory = self.root / artifact["path"]
        if not directory.is_dir():
            return f"its artifact {artifact['path']} is missing"
        digest, _, _ = tree_digest(directory, self.cache, trust_cache=trust_cache)
        if digest != artifact["digest"]:
            return f"its artifact {artifact['path']} fails its digest (files were changed or damaged)"
        return None

    def prune(self, keep: set[str]) -> tuple[list[str], int]:
        """Remove the artifacts whose key is not in `keep`: (their keys, bytes freed)."""
        removed, freed = [], 0
        for directory in sorted(self.objects.glob("*/*")):
            if directory.is_dir() and directory.name not in keep:
                freed += sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
                shutil.rmtree(directory)
                removed.append(directory.name)
        return removed, freed

    def save_cache(self) -> None:
        self.cache.save()

    def clear_staging(self) -> None:
        """Remove what killed runs left half-built; nothing in it was ever recorded."""
        shutil.rmtree(self.state_dir / "tmp", ignore_errors=True)


def tree_digest(directory: Path, cache: FingerprintCache, *, trust_cache: bool = True) -> tuple[str, int, int]:
    """(digest, total bytes, file count) of a directory: its relative paths and file digests."""
    outer = hashlib.sha256()
    size = files = 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        outer.update(f"{relative}\0{file_digest(path, cache, trust_cache=trust_cache)}\n".encode())
        size += path.stat().st_size
        files += 1
    return "sha256:" + outer.hexdigest(), size, files
