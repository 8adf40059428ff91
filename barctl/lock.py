"""The lockfile (`barctl.lock`: the record of built artifacts) and the state lock.

The lockfile is rewritten atomically (temp file, fsync, rename) after every node, so a
killed apply loses at most the node that was running. The state lock keeps two applies
from writing the same lockfile and store at once.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from barctl.errors import BarctlError

LOCK_VERSION = 1
HEADER = "# Written by barctl: the record of built artifacts. Commit it next to the manifest.\n"


class Lockfile:
    """Entries by node id, as recorded after each node was built."""

    def __init__(self, path: Path, manifest: str, entries: dict[str, dict[str, Any]] | None = None):
        self.path = path
        self.manifest = manifest
        self.entries: dict[str, dict[str, Any]] = dict(entries or {})

    @classmethod
    def read(cls, path: Path, manifest: str) -> "Lockfile":
        """Read the lockfile; an absent one is empty. A damaged one is an error, never overwritten."""
        if not path.exists():
            return cls(path, manifest)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise BarctlError(f"{path} is damaged and cannot be read ({_first_line(error)}); "
                              "restore it from version control") from None
        if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(
            data.get("nodes", {}), dict
        ):
            raise BarctlError(f"{path} is not a barctl lockfile of version {LOCK_VERSION}; "
                              "restore it from version control")
        recorded = data.get("manifest")
        if recorded and recorded != manifest:
            raise BarctlError(
                f"{path} records the manifest {recorded}, not {manifest}; give this manifest its own "
                "lockfile with a top-level `lockfile:` field"
            )
        return cls(path, manifest, data.get("nodes") or {})

    def digest(self) -> str:
        """Digest of the lockfile as it is on disk ("absent" when there is none)."""
        if not self.path.exists():
            return "absent"
        return "sha256:" + hashlib.sha256(self.path.read_bytes()).hexdigest()

    def write(self, order: list[str]) -> None:
        """Write atomically; entries follow `order` (graph order), strays after it by id."""
        ranked = [i for i in order if i in self.entries] + sorted(set(self.entries) - set(order))
        document = {
            "version": LOCK_VERSION,
            "manifest": self.manifest,
            "nodes": {node_id: self.entries[node_id] for node_id in ranked},
        }
        text = HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)
        atomic_write(self.path, text)


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class StateLock:
    """An exclusive lock on a project's lockfile and store, naming its holder."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "state.lock"
        self.info: dict[str, Any] | None = None

    def acquire(self, command: str) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "id": str(uuid.uuid4()),
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": getpass.getuser(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise BarctlError(held_message(self.path)) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(info, handle, indent=2)
        self.info = info
        return info

    def release(self) -> None:
        if self.info is not None:
            self.path.unlink(missing_ok=True)
            self.info = None

    def __enter__(self) -> "StateLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"id": "unreadable"}


def held_message(path: Path) -> str:
    holder = read_holder(path) or {}
    who = (
        f"{holder.get('command', 'barctl')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"user {holder.get('user', '?')}) since {holder.get('since', '?')}"
    )
    alive = ""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        alive = " (that process is still running)" if _pid_alive(holder["pid"]) else (
            " (that process is no longer running)")
    return (
        f"the project's state is locked by {who}{alive}.\n"
        f"If no barctl is running, release it with: barctl force-unlock {holder.get('id', '?')}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def force_unlock(state_dir: Path, lock_id: str) -> dict[str, Any]:
    """Clear a state lock left by a killed process; the id must match, as a safety check."""
    path = state_dir / "state.lock"
    holder = read_holder(path)
    if holder is None:
        raise BarctlError("the project's state is not locked")
    if holder.get("id") not in (lock_id, "unreadable"):
        raise BarctlError(f"the state lock's id is {holder.get('id')}, not {lock_id}")
    path.unlink(missing_ok=True)
    return holder
