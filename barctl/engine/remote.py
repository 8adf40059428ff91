"""A store shared between machines, as Bazel's remote cache: artifacts by node key.

`store: {remote: URL}` names it: a path (relative to the manifest) or any fsspec URL
(s3://, gs://, ... with the matching fsspec package installed). Before building a node,
apply pulls its key's artifact when the remote has it, checks the content against the
digest recorded with it, and uses it instead of building; `apply --push` uploads what
it builds (CI writes, laptops read). Each key's directory holds `artifact/` and
`entry.json` (the lock entry), written last, so a half-pushed artifact is never seen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENTRY = "entry.json"


class RemoteStore:
    def __init__(self, url: str, root: Path):
        import fsspec

        self.url = url
        self.fs, self.base = fsspec.core.url_to_fs(url if "://" in url else str((root / url).resolve()))

    def _dir(self, key: str) -> str:
        return f"{self.base.rstrip('/')}/{key[:2]}/{key}"

    def entry(self, key: str) -> dict[str, Any] | None:
        """The lock entry pushed with `key`'s artifact, or None when the remote does not have it."""
        try:
            return json.loads(self.fs.cat_file(f"{self._dir(key)}/{ENTRY}"))
        except FileNotFoundError:
            return None

    def pull(self, key: str, into: Path) -> None:
        """Download `key`'s artifact files into the (empty) directory `into`."""
        prefix = f"{self._dir(key)}/artifact/"
        for remote in self.fs.find(prefix):
            relative = remote[len(prefix):] if remote.startswith(prefix) else remote.split("/artifact/", 1)[1]
            local = into / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local))

    def push(self, key: str, artifact: Path, entry: dict[str, Any]) -> bool:
        """Upload an artifact and its entry, unless the remote has the key already; True when uploaded."""
        if self.entry(key) is not None:
            return False
        target = self._dir(key)
        for path in sorted(p for p in artifact.rglob("*") if p.is_file()):
            remote = f"{target}/artifact/{path.relative_to(artifact).as_posix()}"
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(path), remote)
        self.fs.pipe_file(f"{target}/{ENTRY}", json.dumps(entry, indent=1).encode())
        return True
