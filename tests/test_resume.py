"""A killed apply leaves the lockfile and the store valid, and the next plain apply resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.projects import changed, make_project, plan_json, tiny_manifest

REPO = Path(__file__).resolve().parent.parent


def test_killing_apply_mid_run_loses_only_the_running_node(tmp_path, tokenizer_dir):
    manifest = make_project(tmp_path, tokenizer_dir, tiny_manifest({f"e{i}": {} for i in range(4)}))
    lock = tmp_path / "barctl.lock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "barctl", "apply", str(manifest), "--auto-approve"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if lock.exists() and len(yaml.safe_load(lock.read_text())["nodes"]) >= 2:
            break
        time.sleep(0.005)
    assert process.poll() is None, "apply finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    recorded = yaml.safe_load(lock.read_text())["nodes"]  # still a valid lockfile
    assert 2 <= len(recorded) < 9
    for entry in recorded.values():  # every recorded artifact is whole
        assert (tmp_path / entry["artifact"]["path"]).is_dir()
    assert (tmp_path / ".barctl" / "state.holder").exists()  # the killed apply's record stays behind
    stray = tmp_path / ".barctl.lock.x1y2z3.tmp"  # what a kill during the lockfile's atomic write leaves
    stray.write_text("half a lockfile")

    actions = plan_json(manifest)
    assert {n for n, a in changed(actions).items()} == set(actions) - set(recorded)
    assert all(a == "create" for a in changed(actions).values())

    from tests.projects import apply

    apply(manifest)  # no force-unlock: the kernel released the dead apply's lock
    assert changed(plan_json(manifest)) == {}
    assert not stray.exists()
    assert not any((tmp_path / ".barctl" / "tmp").glob("*"))  # half-built leftovers cleared
