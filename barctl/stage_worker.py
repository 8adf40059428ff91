"""The process `accelerate launch` starts for a stage: rebuild the node's context, train.

Usage (built by barctl.launch, not by hand):
    python -m barctl.stage_worker --manifest M --node ID

Every rank loads the project and trains; only the main process (global rank 0) reports
progress, saves the model into the launch's output path and writes the metrics. Progress
comes as apply chose (`BARCTL_PROGRESS`, see barctl.progress): a bar on the terminal apply
runs in, else plain lines on stdout, which apply reads and reports as the node's own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from barctl.launch import METRICS_FILE, die_with_parent, worker_paths
from barctl.nodes import NodeContext
from barctl.progress import current_mode
from barctl.project import Project


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="barctl.stage_worker")
    for option in ("--manifest", "--node"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    die_with_parent()

    from accelerate import PartialState

    from barctl.logs import library_progress_bars
    from barctl.nodes import stage
    from barctl.stages.common import on_cpu

    library_progress_bars(current_mode() == "bars")

    # cpu=True on a machine without GPUs: the launched ranks then form a gloo group (MULTI_CPU)
    state = PartialState(cpu=on_cpu())
    ctx = node_context(Path(args.manifest), args.node, state.is_main_process)
    metrics = stage.train_stage(ctx)
    if state.is_main_process:
        (ctx.work / METRICS_FILE).write_text(json.dumps(metrics))


def node_context(manifest: Path, node_id: str, main_process: bool) -> NodeContext:
    """The stage's context, rebuilt from the manifest and the lockfile; only the main process speaks."""
    project = Project.load(manifest)
    node = project.graph[node_id]
    entries = project.lockfile.entries
    inputs = {i: project.store.root / entries[i]["artifact"]["path"] for i in node.inputs}
    out, work = worker_paths(project.recipe, node.id)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    say = (lambda message: print(message, flush=True)) if main_process else (lambda message: None)
    return NodeContext(project.recipe, node, inputs, out, work, say=say)


if __name__ == "__main__":
    main()
