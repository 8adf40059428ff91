"""The sandbox holds when its caller does not: model code dies with a killed barctl and at its
own deadline, memfd_create is denied, no preexec_fn runs in the (threaded) caller, and without
namespaces model code runs only where the manifest allows it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from barctl.rewards import sandbox
from barctl.rewards.sandbox import run_python
from tests.test_rewards_sandbox import mode, sandbox_processes  # noqa: F401  (a fixture and a helper)

REPO = Path(__file__).resolve().parent.parent


def test_model_code_dies_with_a_killed_caller(mode):  # noqa: F811
    namespaces = "" if mode == "namespaces" else "sandbox.namespaces_available = lambda: False\n"
    caller = subprocess.Popen(
        [sys.executable, "-c", "from barctl.rewards import sandbox\n" + namespaces
         + "print('go', flush=True)\nsandbox.run_python('import time\\ntime.sleep(600)', timeout_s=600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert caller.stdout.readline() == "go\n"
    deadline = time.monotonic() + 30
    while not _sleeping_in_the_sandbox() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sleeping_in_the_sandbox(), "the sandbox never started"
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 15  # generous: the machine may be busy
    while _sleeping_in_the_sandbox() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _sleeping_in_the_sandbox()  # the watchdog saw barctl's pipe close and killed the code


def _sleeping_in_the_sandbox() -> bool:
    """Whether a sandbox child runs this test's program (not the start-up probe)."""
    for pid in sandbox_processes():
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            workdir = arguments[arguments.index(next(a for a in arguments if a.endswith(b"sandbox_child.py"))) + 1]
            if b"sleep(600)" in Path(os.fsdecode(workdir), "main.py").read_bytes():
                return True
        except (OSError, ValueError, IndexError, StopIteration):
            continue
    return False


def test_the_child_enforces_its_own_deadline(tmp_path):
    (tmp_path / "main.py").write_text("import time\ntime.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-I", str(Path(sandbox.__file__).with_name("sandbox_child.py")),
                              str(tmp_path), "0", "512", "700", "0.5"], stdin=subprocess.PIPE)
    try:
        assert child.wait(timeout=30) == 128 + signal.SIGKILL  # nobody else killed it: the stdin pipe is open
    finally:
        child.stdin.close()


def test_memfd_create_is_denied(mode):  # noqa: F811
    result = run_python("import os\nos.memfd_create('x')\n")
    assert not result.ok and "PermissionError: [Errno 1] Operation not permitted" in result.stderr


def test_no_preexec_fn_runs_in_the_caller(monkeypatch):
    seen = []
    real = subprocess.Popen

    def popen(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sandbox.subprocess, "Popen", popen)
    result = run_python("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20)", memory_mb=300)
    assert result.ok and result.stdout.strip() == "300"  # the child set its own limits
    assert seen and all(kwargs.get("preexec_fn") is None for kwargs in seen)



def test_without_namespaces_model_code_is_refused_unless_the_manifest_allows_it(monkeypatch, caplog):
    from barctl.errors import BarctlError

    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    monkeypatch.delenv(sandbox.UNISOLATED_ENV, raising=False)
    with pytest.raises(BarctlError, match="cannot isolate model-written code here"):
        run_python("print(1)")
    monkeypatch.setenv(sandbox.UNISOLATED_ENV, "1")
    for _ in range(2):  # every run warns, on barctl's logger (the CLI shows its warnings)
        assert run_python("print(1)").stdout == "1\n"
    warned = [r for r in caplog.records if r.name == "barctl.rewards.sandbox" and r.levelname == "WARNING"]
    assert len(warned) == 2 and "WITHOUT filesystem isolation" in warned[0].getMessage()


def test_plan_refuses_code_tests_without_isolation_at_its_line(tmp_path, tokenizer_dir, monkeypatch):
    import json

    from tests.projects import barctl, make_project, tiny_manifest

    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    (tmp_path / "code.jsonl").write_text(json.dumps({"prompt": "def f(): ...", "tests": "assert True"}) + "\n")
    evals = {"domains": {"code": {"dataset": "code_eval", "metric": "code_tests"}}}
    datasets = {"code_eval": {"path": "code.jsonl", "format": "prompt"}}
    path = make_project(tmp_path, tokenizer_dir, tiny_manifest(datasets=datasets, evals=evals))
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if "metric: code_tests" in row)
    result = barctl("plan", path)
    assert result.exit_code == 1
    assert f"{path}:{line}:" in result.output and "sandbox: {isolation: best_effort}" in result.output
    allowed = make_project(tmp_path, tokenizer_dir, tiny_manifest(datasets=datasets, evals=evals,
                                                                  sandbox={"isolation": "best_effort"}))
    assert barctl("plan", allowed).exit_code == 0
