"""The lockfile (`barctl.lock`: the record of built artifacts) and the state lock.

The lockfile is rewritten atomically (temp file, fsync, rename) after every node, so a
killed apply loses at most the node that was running, and checked whenever it is read.
The state lock, an OS lock that ends with its process, keeps two applies from writing the
same lockfile and store at once; on a filesystem without flock (some NFS and FUSE mounts)
it is a lock file naming its holder instead, with a warning.
"""

from __future__ import annotations

import errno
import getpass
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from barctl.errors import BarctlError, Issue, ManifestError
from barctl.manifest.paths import STATE_DIR
from barctl.manifest.yamlload import LoadedYaml, load_yaml_text

HEADER = "# Written by barctl: the record of built artifacts. Commit it next to the manifest.\n"


LOCK_VERSION = 2
# The last line of every lockfile barctl writes: a file cut short (a bad copy, a full disk
# outside barctl) is refused instead of being read as a smaller valid lock.
FOOTER = "# end of barctl.lock\n"
MAX_BYTES = 64 * 2**20
RESTORE = "restore it from version control"
MAX_VALUES = 1_000_000
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Field -> (type, required) of each node's entry; the artifact's fields are all required.
ENTRY_FIELDS: dict[str, tuple[type, bool]] = {
    "kind": (str, True), "kind_version": (int, False), "key": (str, True), "inputs": (dict, False),
    "config": (dict, False), "data": (dict, False), "artifact": (dict, True), "metrics": (dict, False),
    "built_with": (dict, False), "built_at": (str, False),
}
ARTIFACT_FIELDS: dict[str, type] = {"path": str, "digest": str, "size": int, "files": int}


class Lockfile:
    """Entries by node id, as recorded after each node was built."""

    def __init__(self, path: Path, manifest: str, entries: dict[str, dict[str, Any]] | None = None):
        self.path = path
        self.manifest = manifest
        self.entries: dict[str, dict[str, Any]] = dict(entries or {})

    @classmethod
    def read(cls, path: Path, manifest: str, root: Path) -> Lockfile:
        """Read and check the lockfile of the project at `root`; an absent one is empty.

        A damaged one (cut short, wrong types, artifacts outside the store) is an error
        naming the entry, and is never overwritten.
        """
        if not path.exists():
            return cls(path, manifest)
        try:
            raw = path.read_bytes()
            loaded = load_yaml_text(raw, str(path), max_bytes=MAX_BYTES, max_nodes=MAX_VALUES)
        except OSError as error:
            raise BarctlError(f"cannot read {path}: {error.strerror}") from None
        except ManifestError as error:
            raise BarctlError(f"{error}\n{path} is damaged; {RESTORE}") from None
        data = loaded.data
        if not isinstance(data, dict) or data.get("version") not in (1, LOCK_VERSION) or not isinstance(
            data.get("nodes") or {}, dict
        ):
            raise BarctlError(f"{path} is not a barctl lockfile of version {LOCK_VERSION}; {RESTORE}")
        if data["version"] == LOCK_VERSION and not raw.endswith(FOOTER.encode()):
            raise BarctlError(f"{path} is cut short (its last line is not {FOOTER.strip()!r}); {RESTORE}")
        recorded = data.get("manifest")
        if recorded and recorded != manifest:
            raise BarctlError(
                f"{path} records the manifest {recorded}, not {manifest}; give this manifest its own "
                "lockfile with a top-level `lockfile:` field"
            )
        entries = data.get("nodes") or {}
        issues = [issue for node_id, entry in entries.items() for issue in _entry_issues(loaded, node_id, entry, root)]
        if issues:
            lines = "\n".join("  " + issue.format(str(path)) for issue in issues)
            raise BarctlError(f"{path} has damaged entries:\n{lines}\n{RESTORE}, or delete those entries "
                              "to rebuild their nodes")
        return cls(path, manifest, entries)

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
        text = HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100) + FOOTER
        atomic_write(self.path, text)

    def clear_stray_temp_files(self) -> None:
        """Remove the temp files of writes that a killed apply left (call while holding the state lock)."""
        for stray in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stray.unlink(missing_ok=True)


def _entry_issues(loaded: LoadedYaml, node_id: Any, entry: Any, root: Path) -> list[Issue]:
    where: tuple = ("nodes", node_id)
    if not isinstance(entry, dict):
        return [loaded.issue(where, f"expected a mapping, got {type(entry).__name__}")]
    issues = []
    for name, (kind, required) in ENTRY_FIELDS.items():
        if name not in entry:
            if required:
                issues.append(loaded.issue(where, f"missing field '{name}'"))
        elif not _is(entry[name], kind):
            issues.append(loaded.issue(where + (name,), f"expected {kind.__name__}, got {type(entry[name]).__name__}"))
    inputs = entry.get("inputs")
    if isinstance(inputs, dict) and not all(isinstance(key, str) for key in inputs.values()):
        issues.append(loaded.issue(where + ("inputs",), "every input's key must be a string"))
    artifact = entry.get("artifact")
    if isinstance(artifact, dict):
        issues += _artifact_issues(loaded, where + ("artifact",), artifact, entry.get("kind"), root)
    return issues


def _artifact_issues(loaded: LoadedYaml, where: tuple, artifact: dict, kind: Any, root: Path) -> list[Issue]:
    issues = [loaded.issue(where + (name,), f"expected {expected.__name__}")
              for name, expected in ARTIFACT_FIELDS.items() if not _is(artifact.get(name), expected)]
    if isinstance(artifact.get("digest"), str) and not _DIGEST.fullmatch(artifact["digest"]):
        issues.append(loaded.issue(where + ("digest",), "expected sha256:<64 hex digits>"))
    if isinstance(artifact.get("path"), str):
        problem = _artifact_path_problem(artifact["path"], kind, root.resolve())
        if problem:
            issues.append(loaded.issue(where + ("path",), problem))
    return issues


def _artifact_path_problem(path: str, kind: Any, root: Path) -> str | None:
    """Artifacts live in the store; only the export's (the output) lives elsewhere in the project."""
    resolved = (root / path).resolve()
    state, store = root / STATE_DIR, root / STATE_DIR / "store"
    if kind == "export":
        if root not in resolved.parents or resolved == state or state in resolved.parents:
            return f"{path} is not a directory of the project outside {STATE_DIR}/"
    elif store not in resolved.parents:
        return f"{path} is outside the artifact store {STATE_DIR}/store/"
    return None


def _is(value: Any, kind: type) -> bool:
    """isinstance, except that a boolean is not an int."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


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


# errnos of a filesystem that has no flock (ENOTSUP is EOPNOTSUPP on Linux)
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_CONTENTION = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})


class StateLock:
    """An exclusive lock on a project's lockfile and store, naming its holder.

    It is an OS lock (flock) on `.barctl/state.lock`: the kernel releases it when the
    holding process ends, however it ends, so a killed apply never leaves the project
    locked. Who holds it (command, pid, host, user, since) is kept next to it, in
    `.barctl/state.holder`, for the message a second apply gets.

    Where the filesystem has no flock, it is filelock's SoftFileLock on
    `.barctl/state.softlock` instead (with a warning): a file created exclusively that
    records the holder's pid and host. A holder killed on this host is found dead and its
    lock taken over; one on another host cannot be checked from here, so the message
    names `barctl force-unlock`. Every machine sharing a project must then see the same
    filesystem behaviour.
    """

    def __init__(self, state_dir: Path):
        self.path = state_dir / "state.lock"
        self.soft_path = state_dir / "state.softlock"
        self.holder_path = state_dir / "state.holder"
        self.info: dict[str, Any] | None = None
        self._lock: Any = None

    def _file_lock(self) -> tuple[Any, bool]:
        """(a filelock lock with timeout 0, whether it is the soft lock of a filesystem without flock)."""
        from filelock import FileLock, SoftFileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        missing = no_flock(self.path)
        if missing is None:
            return FileLock(str(self.path), timeout=0), False
        logging.getLogger(__name__).warning(
            "%s is on a filesystem without flock (%s): the state lock is the lock file %s, which names its "
            "holder; a holder killed on another host is not detected (barctl force-unlock clears it)",
            self.path.parent, missing.strerror, self.soft_path.name)
        return SoftFileLock(str(self.soft_path), timeout=0), True

    def acquire(self, command: str) -> dict[str, Any]:
        from filelock import Timeout

        lock, soft = self._file_lock()
        try:
            lock.acquire()
        except Timeout:
            raise BarctlError(held_message(self.holder_path, soft)) from None
        info = {
            "id": str(uuid.uuid4()),
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": getpass.getuser(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write(self.holder_path, json.dumps(info, indent=2) + "\n")
        self._lock, self.info = lock, info
        return info

    def release(self) -> None:
        if self._lock is not None:
            self.holder_path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = self.info = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"id": "unreadable"}
    return holder if isinstance(holder, dict) else {"id": "unreadable"}


def no_flock(path: Path) -> OSError | None:
    """The error flock gives on `path` (created if absent) where its filesystem has no flock; else None."""
    try:
        import fcntl
    except ImportError:  # not Unix: filelock's native lock needs no flock
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released with the descriptor, not the holder's
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return e
        if e.errno not in _CONTENTION:
            raise
    finally:
        os.close(fd)
    return None


def held_message(holder_path: Path, soft: bool = False) -> str:
    holder = read_holder(holder_path) or {}
    who = (
        f"{holder.get('command', 'barctl')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"user {holder.get('user', '?')}) since {holder.get('since', '?')}"
    )
    if soft:
        return (
            f"the project's state is locked by {who}.\nThis filesystem has no flock: a holder on this host is "
            "running; one on another host cannot be checked from here, and if it is gone, "
            f"`barctl force-unlock {holder.get('id', '?')}` clears its lock"
        )
    return (
        f"the project's state is locked by {who}, which is still running.\n"
        "Wait for it to finish, or stop it: the lock is released when that process ends"
    )


def force_unlock(state_dir: Path, lock_id: str) -> dict[str, Any]:
    """Clear the record of a state lock whose holder is gone; refused while the holder runs.

    The OS lock itself needs no clearing: it ends with its process. Without flock, the
    lock file of a holder on another host (which cannot be checked from here) is removed.
    """
    from filelock import Timeout

    lock = StateLock(state_dir)
    holder = read_holder(lock.holder_path)
    if holder is None:
        raise BarctlError("the project's state is not locked")
    if holder.get("id") not in (lock_id, "unreadable"):
        raise BarctlError(f"the state lock's id is {holder.get('id')}, not {lock_id}")
    probe, soft = lock._file_lock()
    try:
        probe.acquire()
    except Timeout:
        if not soft or holder.get("host") == socket.gethostname():
            raise BarctlError(held_message(lock.holder_path) + "; force-unlock does not take a live lock") from None
        lock.soft_path.unlink(missing_ok=True)  # the user vouches that the holder on the other host is gone
        lock.holder_path.unlink(missing_ok=True)
        return holder
    try:
        lock.holder_path.unlink(missing_ok=True)
    finally:
        probe.release()
    return holder
