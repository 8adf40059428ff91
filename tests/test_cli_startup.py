"""`barctl --help`, `validate` and `plan` never import torch, so they stay instant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.projects import make_project

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from barctl.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
heavy = [m for m in ("torch", "transformers", "trl", "datasets", "deepspeed") if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
"""


def _heavy_imports(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    line = [x for x in result.stdout.splitlines() if x.startswith("HEAVY=")]
    assert line, result.stdout + result.stderr
    return line[0].removeprefix("HEAVY=")


def test_help_imports_no_ml_library(tmp_path):
    assert _heavy_imports("--help", cwd=tmp_path) == ""


def test_validate_and_plan_import_no_ml_library(tmp_path, tokenizer_dir):
    manifest = make_project(tmp_path, tokenizer_dir)
    assert _heavy_imports("validate", str(manifest), cwd=tmp_path) == ""
    assert _heavy_imports("plan", str(manifest), cwd=tmp_path) == ""
