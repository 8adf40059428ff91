"""Running a stage through `accelerate launch`: many processes, many nodes, optionally DeepSpeed ZeRO.

`apply` writes the node's context, as it keyed and pinned it (the node, its inputs, its
upstream lock entries, the datasets with hub branches replaced by the planned commits), to
`.barctl/launched/<node>.context.json`, then starts `accelerate launch -m
barctl.training.worker --manifest M --node ID` on its machine. Every process reads that context
(no rank re-resolves a hub branch or re-hashes a dataset), trains its share, and the main
process saves the model into a path every node derives from the project alone (so the other
nodes of a multi-node stage, on the shared project directory, can run the same worker
command, through `python -m barctl.training.launch M ID` on each of them). Ranks read the file only
after they all joined the process group, which apply's own ranks join only once it is written.

Processes: the launcher's `num_processes` counts one node's processes; accelerate takes the
total, `num_processes x num_machines`. Without a config file that chooses a distributed type,
barctl asks for accelerate's multi-process launcher (`--multi_gpu`), which on a machine without
GPUs runs gloo ranks on the CPU; accelerate's default (simple) launcher would start one process.

A multi-node launch needs the machine's rank and the main process's address and port: from
the launcher block, else from the environment (`NODE_RANK`, `MASTER_ADDR`, `MASTER_PORT` as
torchrun and most cluster schedulers set them; under SLURM `SLURM_NODEID` and the first host
of `SLURM_JOB_NODELIST`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from barctl.engine.lock import atomic_write
from barctl.engine.store import Store
from barctl.errors import BarctlError
from barctl.manifest.recipe import Recipe
from barctl.manifest.sections import Launcher
from barctl.progress import current_mode
from barctl.runners import NodeContext

METRICS_FILE = "metrics.json"
# accelerate config `distributed_type`s under which its simple launcher starts a single process
_SINGLE_PROCESS_TYPES = {"NO", "MULTI_CPU"}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stage_launcher(recipe: Recipe, node_id: str) -> Launcher:
    """The launcher a stage node declares (`local` when it declares none)."""
    parts = node_id.split(".", 2)
    for expert in recipe.experts:
        for stage in expert.stages:
            if parts == ["experts", expert.name, stage.name]:
                return stage.launcher
    raise BarctlError(f"{node_id!r} is not a training stage of {recipe.manifest_path.name}")


def worker_paths(recipe: Recipe, node_id: str) -> tuple[Path, Path]:
    """(out, work) of a launched stage: where its main process saves the model, and its checkpoints.

    Both derive from the project and the node alone, so every node of a multi-node launch agrees on them.
    """
    store = Store(recipe.root)
    return store.state_dir / "launched" / node_id, store.work_dir(node_id)


def write_context(ctx: NodeContext) -> Path:
    """Hand the launched ranks the node's context as apply built it (see the module's docstring)."""
    path = context_path(ctx.recipe, ctx.node.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = {node_id: str(path.relative_to(ctx.recipe.root) if path.is_relative_to(ctx.recipe.root) else path)
              for node_id, path in ctx.inputs.items()}
    context = {"node": dataclasses.asdict(ctx.node), "inputs": inputs, "upstream": ctx.upstream,
               "datasets": ctx.recipe.datasets}
    atomic_write(path, json.dumps(context, indent=1))
    return path


def context_path(recipe: Recipe, node_id: str) -> Path:
    """Where apply hands a launched stage its context (beside `out`, outside the work directory the
    main rank may empty)."""
    out, _ = worker_paths(recipe, node_id)
    return out.with_name(out.name + ".context.json")


def accelerate_command(launcher: Launcher, recipe: Recipe, node_id: str,
                       env: Mapping[str, str] | None = None, machine_rank: int | None = None) -> list[str]:
    """The `accelerate launch` command line of a stage, for this machine (`machine_rank`, else from `env`)."""
    env = os.environ if env is None else env
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    config_type = None
    if "config_file" in launcher:
        config_file = recipe.resolve(launcher["config_file"])
        command += ["--config_file", str(config_file)]
        config_type = _distributed_type(config_file)
    machines = int(launcher.get("num_machines", 1))
    if "num_processes" in launcher:
        total = int(launcher["num_processes"]) * machines
        command += ["--num_processes", str(total)]
        if total > 1 and (config_type is None or config_type in _SINGLE_PROCESS_TYPES):
            command.append("--multi_gpu")
    if "num_machines" in launcher:
        command += ["--num_machines", str(machines)]
    if machines > 1:
        command += _multi_node_options(launcher, env, machine_rank)
    return command + ["-m", "barctl.training.worker", "--manifest", str(recipe.manifest_path), "--node", node_id]


def _distributed_type(config_file: Path) -> str | None:
    try:
        config = yaml.safe_load(config_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BarctlError(f"launcher.config_file: cannot read {config_file}: {e}") from None
    value = config.get("distributed_type") if isinstance(config, dict) else None
    return str(value).upper() if value is not None else None


def _multi_node_options(launcher: Launcher, env: Mapping[str, str], machine_rank: int | None) -> list[str]:
    rank = machine_rank if machine_rank is not None else _first(env, "NODE_RANK", "SLURM_NODEID")
    address = launcher.get("main_process_ip") or env.get("MASTER_ADDR") or _first_slurm_host(env)
    port = launcher.get("main_process_port") or env.get("MASTER_PORT")
    missing = [what for what, value in (
        ("this machine's rank (NODE_RANK or SLURM_NODEID)", rank),
        ("the main process's address (launcher.main_process_ip, MASTER_ADDR or SLURM_JOB_NODELIST)", address),
    ) if value is None]
    if missing:
        raise BarctlError(f"launcher.num_machines is {launcher['num_machines']}: a multi-node launch needs "
                          + " and ".join(missing))
    options = ["--machine_rank", str(rank), "--main_process_ip", str(address)]
    return options + (["--main_process_port", str(port)] if port is not None else [])


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)


def _first_slurm_host(env: Mapping[str, str]) -> str | None:
    """The first host of a SLURM node list: `gpu[01-04,07],cpu1` -> `gpu01`."""
    nodelist = _first(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if nodelist is None:
        return None
    m = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist)
    return m.group(1) + (m.group(2) or "") if m else None


def die_with_parent() -> None:
    """Have Linux kill this process when its parent dies (elsewhere, nothing happens).

    The launcher and every rank set it, so that a killed apply takes its ranks with it: they
    would otherwise go on writing into the stage's work directory while the next apply resumes.
    """
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_with_accelerate(ctx: NodeContext, launcher: Launcher) -> dict[str, Any]:
    """Train the stage in processes started by accelerate; move the model into `ctx.out`; return the metrics."""
    command = accelerate_command(launcher, ctx.recipe, ctx.node.id)
    ctx.say("launching: " + " ".join(command[1:]))
    out, work = worker_paths(ctx.recipe, ctx.node.id)
    shutil.rmtree(out, ignore_errors=True)
    metrics_file = work / METRICS_FILE
    metrics_file.unlink(missing_ok=True)
    context = write_context(ctx)
    # On a terminal the main rank draws its own bars there; otherwise its lines become the node's own
    # (printed and logged as apply's), so CI logs and --log-file get the stage's progress.
    forward = current_mode() != "bars"
    with subprocess.Popen(command, cwd=ctx.recipe.root, preexec_fn=die_with_parent, text=True, errors="replace",
                          stdout=subprocess.PIPE if forward else None) as process:
        for line in process.stdout or ():
            if line.strip():
                ctx.say(line.rstrip())
    if process.returncode != 0:
        raise BarctlError(f"accelerate launch exited with status {process.returncode}")
    if not metrics_file.is_file() or not out.is_dir():
        raise BarctlError("the launched stage finished without writing its model and metrics")
    for child in out.iterdir():
        child.rename(ctx.out / child.name)
    out.rmdir()
    metrics = json.loads(metrics_file.read_text())
    metrics_file.unlink()
    context.unlink()
    return metrics


def main(argv: list[str] | None = None) -> None:
    """`python -m barctl.training.launch MANIFEST NODE`: run this machine's share of a multi-node stage."""
    parser = argparse.ArgumentParser(prog="python -m barctl.training.launch", description=main.__doc__)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("node")
    parser.add_argument("--machine-rank", type=int, help="default: NODE_RANK or SLURM_NODEID")
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = parser.parse_args(argv)
    from barctl.manifest.recipe import load_recipe

    try:
        recipe = load_recipe(args.manifest)
        launcher = stage_launcher(recipe, args.node)
        if launcher["kind"] != "accelerate":
            raise BarctlError(f"{args.node} declares no accelerate launcher: it runs inside `barctl apply`")
        command = accelerate_command(launcher, recipe, args.node, machine_rank=args.machine_rank)
    except BarctlError as e:
        sys.exit(f"error: {e}")
    if args.print:
        print(" ".join(command))
        return
    sys.exit(subprocess.run(command, cwd=recipe.root, preexec_fn=die_with_parent).returncode)


if __name__ == "__main__":
    main()
