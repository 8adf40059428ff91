"""Run untrusted, model-written Python in a confined, throw-away process.

Layers, outermost first:

- a fresh temporary directory as working directory and HOME, deleted afterwards;
  ``python -I`` (isolated mode) and an environment of PATH, LANG and HOME only;
- resource limits the child sets itself before the code runs (no ``preexec_fn``, which
  is unsafe in a threaded caller): address space (``memory_mb``), CPU time, file size,
  open files, no core dumps;
- when barctl runs as root, the code runs as the unprivileged user nobody
  (``sandbox_child.py --as-nobody``), so root-only files such as /etc/shadow stay unreadable;
- its own session, so on timeout or excess output the whole process group is killed;
- a watchdog (the child's first process) that kills the code at its own deadline and
  as soon as barctl goes away (its stdin pipe from barctl reaches end of file), so model
  code never outlives a killed caller;
- where ``unshare`` can create user namespaces (see ``namespaces_available``): new
  user, mount, PID and network namespaces. The network namespace has no usable
  interface, so nothing can be reached; the PID namespace hides and protects every
  other process and dies with the child; the filesystem is read-only except the
  working directory, which is a 64 MiB tmpfs (see ``sandbox_child.py``);
- a seccomp filter installed before the code runs denies new processes, sockets,
  mount and namespace changes, ptrace, io_uring and memfd_create (anonymous memory
  outside the address-space limit) (``sandbox_child.py``). It is the
  barrier to fork bombs (threads stay allowed, bounded by the address-space limit;
  RLIMIT_NPROC would count every process of the user, so it is not used), and it
  denies socket(2) itself, which no in-process patch of the ``socket`` module could.

Without user namespaces the filesystem is NOT isolated, so the sandbox refuses to run
unless the manifest allows it (``sandbox: {isolation: best_effort}``, which apply passes
on as BARCTL_SANDBOX_UNISOLATED=1) and warns every run: the code can write wherever
its user can (file size is still bounded). As root that user is still nobody where a
mount namespace can be made; where not, the code runs as root, can read every file
and signal other processes, and the warning says so. The seccomp filter still blocks
processes and sockets.

Reading files is not restricted beyond its user's permissions; with no
network and no processes, the only way out is the captured output. Output beyond
``max_output_bytes`` (stdout and stderr together) is not kept: reading stops and the
process is killed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from barctl.errors import BarctlError

_CHILD = Path(__file__).with_name("sandbox_child.py")
# Set by apply when the manifest says `sandbox: {isolation: best_effort}`; read in every process
# that runs model code (stage workers too).
UNISOLATED_ENV = "BARCTL_SANDBOX_UNISOLATED"
UNISOLATED = ("the code sandbox cannot isolate model-written code here: user namespaces are unavailable "
              "(`unshare --user` fails, as in many containers), or barctl runs as root and cannot run the code as "
              "the unprivileged user nobody (see sandbox_child.py). Run where both work, or accept running it "
              "without filesystem isolation with `sandbox: {isolation: best_effort}` in the manifest")
_CHUNK = 65536
# The watchdog's deadline trails the supervisor's: it is the backstop for a caller that died.
_WATCHDOG_GRACE_S = 1.0


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed run ended. ``reason`` says why it is not ``ok`` ("" when it is)."""

    ok: bool
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    reason: str


def run_python(
    code: str, *, timeout_s: float = 5, memory_mb: int = 512, max_output_bytes: int = 65536
) -> SandboxResult:
    """Run ``code`` as a script in the sandbox; ok when it exits 0 within every limit."""
    return _run(code, *_mode(), timeout_s, memory_mb, max_output_bytes)


@functools.cache
def namespaces_available() -> bool:
    """Whether ``unshare`` can give the sandbox its own user, mount, PID and network namespaces
    (as root: owned by an unprivileged user, see ``sandbox_child.py``)."""
    return shutil.which("unshare") is not None and _run("", True, _is_root(), 30, 512, _CHUNK).ok


def _is_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def _unprivileged_works() -> bool:
    return _run("", False, True, 30, 512, _CHUNK).ok


def _mode() -> tuple[bool, bool]:
    """(namespaces, as nobody) for the next run; refuses, or warns, where isolation is missing."""
    if namespaces_available():
        return True, _is_root()
    if os.environ.get(UNISOLATED_ENV) != "1":
        raise BarctlError(UNISOLATED)
    nobody = _is_root() and _unprivileged_works()
    who = ("as root: it can read every file and signal other processes" if _is_root() and not nobody
           else "as the unprivileged user nobody" if nobody else "as the calling user")
    logging.getLogger(__name__).warning(
        "model-written code runs WITHOUT filesystem isolation (no user namespaces here; the manifest allows it "
        "with sandbox.isolation: best_effort), %s: only the limits and the seccomp filter hold it", who)
    probe = _run("", False, nobody, 30, 512, _CHUNK)
    if not probe.ok:
        raise BarctlError(f"cannot start the code sandbox: {probe.reason}: {probe.stderr.strip()}")
    return False, nobody


def _command(workdir: str, namespaces: bool, nobody: bool, memory_mb: int, timeout_s: float) -> list[str]:
    command = [sys.executable, "-I", str(_CHILD), workdir, "1" if namespaces else "0", str(memory_mb),
               str(math.ceil(timeout_s) + 1), str(timeout_s + _WATCHDOG_GRACE_S)]
    if namespaces:
        # --kill-child: when unshare dies, so does the PID namespace with everything in it
        command = ["unshare", "--map-root-user", "--mount", "--net", "--pid", "--fork", "--mount-proc",
                   "--kill-child", "--", *command]
    if nobody:
        reached = [sys.prefix, sys.base_prefix, os.path.dirname(sys.executable), os.path.realpath(sys.executable),
                   str(_CHILD)]
        command = [sys.executable, "-I", str(_CHILD), "--as-nobody", workdir, *reached, "--", *command]
    return command


def _run(code: str, namespaces: bool, nobody: bool, timeout_s: float, memory_mb: int,
         max_output_bytes: int) -> SandboxResult:
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="barctl-sandbox-"))
    try:
        Path(workdir, "main.py").write_text(code, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": os.environ.get("LANG", "C.UTF-8"), "HOME": workdir}
        proc = subprocess.Popen(
            _command(workdir, namespaces, nobody, memory_mb, timeout_s),
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,  # never written: its end of file tells the watchdog barctl is gone
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            return _supervise(proc, time.monotonic() + timeout_s, timeout_s, max_output_bytes)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(proc: subprocess.Popen, deadline: float, timeout_s: float, cap: int) -> SandboxResult:
    assert proc.stdout is not None and proc.stderr is not None  # started with PIPE
    output = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    stop = _read_capped(output, deadline, cap)
    if stop is None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop = "timeout"
    if stop is not None:
        os.killpg(proc.pid, signal.SIGKILL)  # not yet reaped, so the group id is still ours
        proc.wait()
    for stream in output:
        stream.close()
    stdout, stderr = (bytes(b).decode("utf-8", "replace") for b in output.values())
    code = proc.returncode
    if stop == "timeout":
        reason = f"timed out after {timeout_s:g}s"
    elif stop == "output":
        reason = f"output exceeded {cap} bytes"
    elif code < 0:
        reason = f"killed by signal {-code}"
    else:
        reason = f"exit status {code}" if code else ""
    return SandboxResult(not reason, code, stdout, stderr, stop == "timeout", reason)


def _read_capped(output: dict, deadline: float, cap: int) -> str | None:
    """Read both pipes to EOF; "timeout" or "output" when reading had to stop."""
    kept = 0
    with selectors.DefaultSelector() as selector:
        for stream in output:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                room = cap - kept
                output[key.fileobj] += chunk[:room]
                kept += min(len(chunk), room)
                if len(chunk) > room:
                    return "output"
    return None
