"""Running a stage through `accelerate launch` (multi-GPU, optionally DeepSpeed ZeRO).

barctl starts `accelerate launch -m barctl.stage_worker ...` on this machine; each process
rebuilds the node's context from the manifest and the lockfile, trains its share, and the
main process saves the checkpoint and writes the metrics that apply records.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from barctl.errors import BarctlError
from barctl.nodes import NodeContext
from barctl.recipe import Recipe

METRICS_FILE = "metrics.json"


def stage_launcher(recipe: Recipe, node_id: str) -> dict[str, Any]:
    """The launcher a stage node declares (`local` when it declares none)."""
    _, expert, stage_name = node_id.split(".", 2)
    stage = next(s for s in recipe.expert(expert).stages if s.name == stage_name)
    return stage.launcher


def accelerate_command(launcher: dict[str, Any], recipe: Recipe, node_id: str, out: Path,
                       work: Path) -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if "config_file" in launcher:
        command += ["--config_file", str(recipe.resolve(launcher["config_file"]))]
    for option in ("num_processes", "num_machines"):
        if option in launcher:
            command += [f"--{option}", str(launcher[option])]
    return command + [
        "-m", "barctl.stage_worker",
        "--manifest", str(recipe.manifest_path),
        "--node", node_id,
        "--out", str(out),
        "--work", str(work),
    ]


def run_with_accelerate(ctx: NodeContext, launcher: dict[str, Any]) -> dict[str, Any]:
    """Train the stage in processes started by accelerate; return the metrics they wrote."""
    command = accelerate_command(launcher, ctx.recipe, ctx.node.id, ctx.out, ctx.work)
    ctx.say("launching: " + " ".join(command[1:]))
    metrics_file = ctx.work / METRICS_FILE
    metrics_file.unlink(missing_ok=True)
    finished = subprocess.run(command, cwd=ctx.recipe.root)
    if finished.returncode != 0:
        raise BarctlError(f"accelerate launch exited with status {finished.returncode}")
    if not metrics_file.is_file():
        raise BarctlError("the launched stage finished without writing its metrics")
    return json.loads(metrics_file.read_text())
