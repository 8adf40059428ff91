"""The process `accelerate launch` starts for a stage: rebuild the node's context, train.

Usage (built by barctl.training.launch, not by hand):
    python -m barctl.training.worker --manifest M --node ID

Every rank reads the node's context that apply wrote (barctl.training.launch.write_context) and
trains; only the main process (global rank 0) reports
progress, saves the model into the launch's output path and writes the metrics. Progress
comes as apply chose (`BARCTL_PROGRESS`, see barctl.progress): a bar on the terminal apply
runs in, else plain lines on stdout, which apply reads and reports as the node's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from barctl.engine.graph import Node
from barctl.errors import BarctlError
from barctl.manifest.recipe import load_recipe
from barctl.progress import current_mode
from barctl.runners import NodeContext
from barctl.training.launch import METRICS_FILE, context_path, die_with_parent, worker_paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="barctl.training.worker")
    for option in ("--manifest", "--node"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    die_with_parent()

    from accelerate import PartialState

    from barctl.logs import library_progress_bars
    from barctl.runners import stage
    from barctl.training.common import on_cpu

    library_progress_bars(current_mode() == "bars")

    # cpu=True on a machine without GPUs: the launched ranks then form a gloo group (MULTI_CPU)
    state = PartialState(cpu=on_cpu())
    ctx = node_context(Path(args.manifest), args.node, state.is_main_process)
    metrics = stage.train_stage(ctx)
    if state.is_main_process:
        (ctx.work / METRICS_FILE).write_text(json.dumps(metrics))


def node_context(manifest: Path, node_id: str, main_process: bool) -> NodeContext:
    """The stage's context as apply keyed it (its context file); only the main process speaks."""
    recipe = load_recipe(manifest)
    out, work = worker_paths(recipe, node_id)
    path = context_path(recipe, node_id)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BarctlError(f"{node_id}: cannot read the context apply hands its launched ranks ({e}); "
                          "a launched stage starts from `barctl apply`") from None
    node = Node(**{**saved["node"], "inputs": tuple(saved["node"]["inputs"])})
    inputs = {i: recipe.root / path for i, path in saved["inputs"].items()}
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    say = (lambda message: print(message, flush=True)) if main_process else (lambda message: None)
    recipe = dataclasses.replace(recipe, datasets=saved["datasets"])  # hub datasets at the planned commits
    return NodeContext(recipe, node, inputs, out, work, saved["upstream"], say=say)


if __name__ == "__main__":
    main()
