"""The code sandbox against hostile programs: each one is contained and reported."""

from __future__ import annotations

import importlib.util
import os
import resource
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from barctl.rewards import sandbox
from barctl.rewards.code_tests import code_tests
from barctl.rewards.sandbox import namespaces_available, run_python

needs_namespaces = pytest.mark.skipif(
    not namespaces_available(),
    reason="unshare cannot create user namespaces here; without them the sandbox cannot isolate the filesystem",
)


@pytest.fixture(params=["namespaces", "seccomp only"])
def mode(request, monkeypatch):
    """Run a test with the namespaces (when available) and with the fallback without them."""
    if request.param == "namespaces":
        if not namespaces_available():
            pytest.skip("unshare cannot create user namespaces here")
    else:
        monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
        monkeypatch.setenv(sandbox.UNISOLATED_ENV, "1")  # what `sandbox: {isolation: best_effort}` allows
    return request.param


def sandbox_processes() -> list[str]:
    """Processes still running the sandbox's child script, allowing killed ones a moment to go."""
    deadline = time.monotonic() + 2
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    return _sandbox_processes()


def _sandbox_processes() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sandbox_child.py" in f.read():
                    found.append(pid)
        except OSError:  # it exited meanwhile
            pass
    return found


def test_plain_run_in_a_fresh_directory_that_is_removed(mode):
    result = run_python("import os\nprint(os.getcwd(), os.environ['HOME'], sorted(os.environ))")
    assert result.ok, result
    cwd, home, names = result.stdout.split(" ", 2)
    assert cwd == home and os.path.basename(cwd).startswith("barctl-sandbox-")
    assert names.strip() == "['HOME', 'LANG', 'PATH']"
    assert not os.path.exists(cwd)


def test_failure_reports_exit_status():
    result = run_python("raise SystemExit(3)")
    assert (result.ok, result.returncode, result.reason) == (False, 3, "exit status 3")


def test_signals_to_itself_end_the_program(mode):
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nprint('survived')")
    assert not result.ok and result.returncode in (-15, 128 + 15) and "survived" not in result.stdout


def test_infinite_loop_times_out():
    result = run_python("while True:\n    pass", timeout_s=1)
    assert result.timed_out and not result.ok and result.reason == "timed out after 1s"
    assert sandbox_processes() == []


def test_infinite_loop_scores_zero():
    looping = "```python\ndef f():\n    while True:\n        pass\n```"
    assert code_tests(["q"], [looping], tests=["f()"]) == [0.0]


@pytest.mark.parametrize(
    "bomb",
    [
        "import os\nwhile True:\n    os.fork()",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])",
    ],
)
def test_fork_bomb_is_contained(mode, bomb):
    result = run_python(bomb, timeout_s=1)
    assert not result.ok
    assert "Operation not permitted" in result.stderr or result.timed_out
    assert sandbox_processes() == []


def test_threads_still_work(mode):
    code = "import threading\nt = threading.Thread(target=print, args=('hi',))\nt.start()\nt.join()"
    assert run_python(code).stdout == "hi\n"


def test_memory_bomb_fails(mode):
    result = run_python("bytearray(10**10)")
    assert not result.ok and "MemoryError" in result.stderr


@pytest.fixture
def writable_dir():
    """A directory anyone may write to (the sandbox's user may be nobody), so only the mounts stop a write."""
    with tempfile.TemporaryDirectory() as name:
        os.chmod(name, 0o777)
        yield Path(name)


@needs_namespaces
def test_writing_outside_its_directory_fails(writable_dir):
    tmp_path = writable_dir  # so only the read-only mounts stop the write
    target = tmp_path / "pwned"
    code = f"open({str(target)!r}, 'w').write('x')\n"
    result = run_python(code)
    assert not result.ok and "Read-only file system" in result.stderr
    assert not target.exists()
    inside = run_python("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())")
    assert inside.stdout == "ok\n"


@needs_namespaces
def test_cannot_undo_the_read_only_mounts(writable_dir):
    tmp_path = writable_dir
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mount(None, b'/', None, 32 | 4096, None) != 0, 'remounted'\n"  # MS_REMOUNT|MS_BIND, rw
        f"open({str(tmp_path / 'pwned')!r}, 'w')\n"
    )
    result = run_python(code)
    assert not result.ok and "remounted" not in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_socket_to_a_local_listener_fails(mode):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')"
        result = run_python(code)
        assert not result.ok and "Error" in result.stderr
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_capped(mode, stream):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_python(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 1_000_000)", max_output_bytes=4096)
    assert not result.ok and result.reason == "output exceeded 4096 bytes"
    assert len(getattr(result, stream)) == 4096
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


def _root_only_file() -> str:
    """A file only root may read (barctl as root must not let model code read it)."""
    secret = "/etc/shadow"
    if not os.path.exists(secret) or os.stat(secret).st_mode & stat.S_IROTH:
        pytest.skip(f"no root-only {secret} here")
    return secret


def test_root_only_files_stay_unreadable(mode):
    secret = _root_only_file()
    if mode != "namespaces" and os.geteuid() == 0 and not sandbox._unprivileged_works():
        pytest.skip("root here cannot make a mount namespace: best_effort warns that the code runs as root")
    result = run_python(f"import os\nprint(os.getuid(), os.getgroups())\nprint(open({secret!r}).read())")
    assert not result.ok and "PermissionError: [Errno 13] Permission denied" in result.stderr
    if os.geteuid() == 0 and mode != "namespaces":  # no user namespace: the id is nobody's own
        assert result.stdout == "65534 []\n"
    assert run_python("import json, sqlite3\nprint(json.dumps([1]))").stdout == "[1]\n"  # the stdlib still loads


def test_best_effort_as_root_without_a_mount_namespace_warns_that_the_code_runs_as_root(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    monkeypatch.setattr(sandbox, "_is_root", lambda: True)
    monkeypatch.setattr(sandbox, "_unprivileged_works", lambda: False)
    monkeypatch.setenv(sandbox.UNISOLATED_ENV, "1")
    assert run_python("print(1)").stdout == "1\n"
    assert "as root: it can read every file" in caplog.text


def test_the_unprivileged_stage_fails_closed(tmp_path):
    """If it cannot drop root (or, not root, cannot drop at all), the command never runs."""
    marker = tmp_path / "ran"
    child = Path(sandbox.__file__).with_name("sandbox_child.py")
    done = subprocess.run([sys.executable, "-I", str(child), "--as-nobody", str(tmp_path / "missing"), sys.prefix, "--",
                           "touch", str(marker)], capture_output=True, text=True)
    assert done.returncode == 125 and "cannot run the code as an unprivileged user" in done.stderr
    assert not marker.exists()


def test_closed_directories_are_found_and_nested_paths_merged(writable_dir):
    tmp_path = writable_dir  # under /tmp, which anyone may enter
    spec = importlib.util.spec_from_file_location("sandbox_child", Path(sandbox.__file__).with_name("sandbox_child.py"))
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    closed = tmp_path / "home"
    (closed / "py" / "bin").mkdir(parents=True)
    closed.chmod(0o700)
    assert stage._closed_ancestor(str(closed / "py" / "bin" / "python")) == str(closed)
    assert stage._closed_ancestor(str(tmp_path / "x")) is None
    assert stage._outermost([str(closed / "py" / "bin"), str(closed / "py"), str(tmp_path / "b")]) == [
        str(tmp_path / "b"), str(closed / "py")]
