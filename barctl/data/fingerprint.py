"""Fingerprints of the data a dataset spec names, cheap enough for every plan.

Imports neither torch, datasets nor pyarrow: planning must stay instant.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from barctl.data.files import resolve_files

_BLOCK = 1 << 20
_COMMIT = re.compile(r"[0-9a-f]{40}")
# A file written again within the filesystem's timestamp granularity can keep its size and
# mtime; digests of files younger than this are not cached (git's "racily clean" files).
_RACY_NS = 2_000_000_000
_VERSION = 1


class FingerprintCache:
    """File digests by absolute path, trusted while the file's size and mtime are unchanged.

    Stored as JSON at `path`; a missing or corrupt file starts an empty cache.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._entries = self._read()
        self._changed = False

    def get(self, path: str, size: int, mtime_ns: int) -> str | None:
        """The cached digest of `path`, if it was taken at this size and mtime."""
        entry = self._entries.get(path)
        return entry[2] if entry is not None and entry[:2] == (size, mtime_ns) else None

    def put(self, path: str, size: int, mtime_ns: int, digest: str) -> None:
        """Remember a digest (in memory until `save`)."""
        self._entries[path] = (size, mtime_ns, digest)
        self._changed = True

    def save(self) -> None:
        """Write the cache atomically if it changed."""
        if not self._changed:
            return
        document = {"version": _VERSION, "files": {p: list(e) for p, e in sorted(self._entries.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(document, f)
                os.replace(temp, self.path)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError:
            return  # the cache only saves time: a read-only checkout can still plan
        self._changed = False

    def _read(self) -> dict[str, tuple[int, int, str]]:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if document["version"] != _VERSION:
                return {}
            return {
                str(path): (int(size), int(mtime_ns), str(digest))
                for path, (size, mtime_ns, digest) in document["files"].items()
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}


def file_digest(path: Path, cache: FingerprintCache, *, trust_cache: bool = True) -> str:
    """`sha256:<hex>` of a file's content, hashed only when its size or mtime changed
    (always, with `trust_cache=False`: the cache is then only refreshed).

    Updates `cache` in memory; call `cache.save()` when done.
    """
    path = Path(path).absolute()
    stat = path.stat()
    digest = cache.get(str(path), stat.st_size, stat.st_mtime_ns) if trust_cache else None
    if digest is None:
        digest = content_digest(path)
        if time.time_ns() - stat.st_mtime_ns > _RACY_NS:
            cache.put(str(path), stat.st_size, stat.st_mtime_ns, digest)
    return digest


def fingerprint(spec: dict, cache: FingerprintCache) -> dict:
    """What identifies a dataset spec's data: file digests, or the hub id and revision.

    `digest` depends on the files' contents and order only, not on where they are.
    """
    if spec.get("hub"):
        revision = spec.get("revision") or "main"
        return {
            "kind": "hub",
            "id": spec["hub"],
            "revision": revision,
            "pinned": _COMMIT.fullmatch(revision) is not None,
        }
    files = {str(f): file_digest(f, cache) for f in resolve_files(spec)}
    cache.save()
    combined = hashlib.sha256("\n".join(files.values()).encode()).hexdigest()
    return {"kind": "files", "files": files, "digest": f"sha256:{combined}"}


def content_digest(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes, read in blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            sha.update(block)
    return f"sha256:{sha.hexdigest()}"
