"""Node runners: one module per node kind, each a thin layer over barctl.model or a trainer.

A runner gets a NodeContext, writes its artifact into `ctx.out` and returns metrics.
Runners are imported only when a node runs, so planning never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barctl.engine.graph import Node
from barctl.manifest.recipe import Recipe
from barctl.progress import Steps

RUNNERS = {
    "base": "barctl.runners.base",
    "branch": "barctl.runners.branch",
    "merge": "barctl.runners.merge",
    "btx_merge": "barctl.runners.btx_merge",
    "router": "barctl.runners.router",
    "eval": "barctl.runners.eval",
    "gates": "barctl.runners.gates",
    "export": "barctl.runners.export",
    **dict.fromkeys(("midtrain", "sft", "dpo", "grpo"), "barctl.runners.stage"),
}


@dataclass
class NodeContext:
    recipe: Recipe
    node: Node
    inputs: dict[str, Path]  # input node id -> its artifact directory
    out: Path  # an empty staging directory: the artifact goes here
    work: Path  # scratch space that survives a killed run (checkpoints to resume from)
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)  # lock entries of ancestors
    say: Callable[[str], None] = lambda message: None
    note: Callable[[str], None] = lambda message: None  # a line for the log file only (a bar shows it)

    @property
    def config(self) -> dict[str, Any]:
        return self.node.config

    def steps(self, label: str, unit: str) -> Steps:
        """The progress of a long step of this node (see barctl.progress)."""
        return Steps(label, unit, self.say, self.note)


def model_dir(ctx: NodeContext, node_id: str) -> Path:
    """The model directory of input `node_id`: the anchor's for `base`, else the node's artifact."""
    return ctx.inputs["base"] / "anchor" if node_id == "base" else ctx.inputs[node_id]


def has_runner(kind: str) -> bool:
    return kind in RUNNERS


def runner_for(kind: str) -> Callable[[NodeContext], dict[str, Any]]:
    return importlib.import_module(RUNNERS[kind]).run
