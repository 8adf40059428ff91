"""The state lock on a filesystem without flock (some NFS and FUSE mounts), simulated by an flock
that fails as theirs does: a lock file that names its holder, with a warning; a killed holder on
this host is taken over, one on another host is cleared by force-unlock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from barctl.engine.lock import StateLock, force_unlock
from barctl.errors import BarctlError

REPO = Path(__file__).resolve().parent.parent
NO_FLOCK = {"ENOLCK": errno.ENOLCK, "EOPNOTSUPP": errno.EOPNOTSUPP}
FAILING_FLOCK = """
import errno, fcntl, os
def flock(fd, operation):
    raise OSError(errno.{name}, os.strerror(errno.{name}))
fcntl.flock = flock
"""


@pytest.fixture(params=sorted(NO_FLOCK))
def without_flock(request, monkeypatch) -> str:
    code = NO_FLOCK[request.param]

    def flock(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)
    return request.param


def test_without_flock_the_lock_is_a_file_naming_its_holder_and_says_so(tmp_path, without_flock, caplog):
    state = tmp_path / ".barctl"
    first = StateLock(state)
    info = first.acquire("barctl apply one")
    [warned] = [r for r in caplog.records if r.name == "barctl.engine.lock"]
    assert warned.levelname == "WARNING" and f"{state} is on a filesystem without flock" in warned.getMessage()
    assert (state / "state.softlock").read_text().split("\n")[0] == str(os.getpid())
    with pytest.raises(BarctlError) as refused:
        StateLock(state).acquire("barctl apply two")
    assert f"locked by barctl apply one (pid {os.getpid()}" in str(refused.value)
    assert f"barctl force-unlock {info['id']}" in str(refused.value)
    first.release()
    assert not (state / "state.softlock").exists()
    StateLock(state).acquire("barctl apply two")


def test_without_flock_a_killed_holder_on_this_host_is_taken_over(tmp_path, without_flock):
    state = tmp_path / ".barctl"
    holder = subprocess.Popen(
        [sys.executable, "-c", FAILING_FLOCK.format(name=without_flock)
         + "from pathlib import Path\nfrom barctl.engine.lock import StateLock\n"
         + f"StateLock(Path({str(state)!r})).acquire('barctl apply killed')\n"
         + "print('held', flush=True)\nimport time\ntime.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        info = json.loads((state / "state.holder").read_text())
        with pytest.raises(BarctlError, match="does not take a live lock"):
            force_unlock(state, info["id"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    taken = StateLock(state).acquire("barctl apply next")  # no force-unlock needed
    assert taken["pid"] == os.getpid()


def test_without_flock_force_unlock_clears_a_holder_on_another_host(tmp_path, without_flock):
    state = tmp_path / ".barctl"
    state.mkdir()
    (state / "state.softlock").write_text("4242\nother-host\n")  # filelock's marker: pid, host
    holder = {"id": "lock-1", "command": "barctl apply", "pid": 4242, "host": "other-host"}
    (state / "state.holder").write_text(json.dumps(holder))
    with pytest.raises(BarctlError, match="force-unlock lock-1"):
        StateLock(state).acquire("barctl apply here")
    assert force_unlock(state, "lock-1") == holder
    assert StateLock(state).acquire("barctl apply here")["host"] != "other-host"


def test_with_flock_there_is_no_warning_and_no_lock_file(tmp_path, caplog):
    lock = StateLock(tmp_path / ".barctl")
    lock.acquire("barctl apply")
    assert not (tmp_path / ".barctl" / "state.softlock").exists()
    assert not [r for r in caplog.records if r.name == "barctl.engine.lock"]
    lock.release()
