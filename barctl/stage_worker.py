"""The process `accelerate launch` starts for a stage: rebuild the node's context, train.

Usage (built by barctl.launch, not by hand):
    python -m barctl.stage_worker --manifest M --node ID --out DIR --work DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from barctl.launch import METRICS_FILE
from barctl.nodes import NodeContext
from barctl.project import Project


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="barctl.stage_worker")
    for option in ("--manifest", "--node", "--out", "--work"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)

    from accelerate import PartialState

    from barctl.nodes import stage

    state = PartialState()
    project = Project.load(Path(args.manifest))
    node = project.graph[args.node]
    entries = project.lockfile.entries
    inputs = {i: project.store.root / entries[i]["artifact"]["path"] for i in node.inputs}
    say = print if state.is_main_process else (lambda message: None)
    ctx = NodeContext(project.recipe, node, inputs, Path(args.out), Path(args.work), say=say)
    metrics = stage.train_stage(ctx)
    if state.is_main_process:
        (Path(args.work) / METRICS_FILE).write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
