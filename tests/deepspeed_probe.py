"""Run under `accelerate launch` with a DeepSpeed config (tests/test_multiprocess.py): train a stage as
barctl.training.worker does, then write to RESULT how far the optimiser's fp32 master copy of the anchor's
elements (expert slot 0, router row 0) moved from the input's values.

    python -m accelerate.commands.launch --config_file C tests/deepspeed_probe.py MANIFEST NODE RESULT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import PartialState
from deepspeed.utils import safe_get_full_fp32_param
from transformers import TrainerCallback

from barctl.model.freezing import group_of
from barctl.runners import stage
from barctl.training.common import load_model
from barctl.training.worker import node_context


class MasterCopyDrift(TrainerCallback):
    def __init__(self, anchor: dict):
        self.anchor, self.drift = anchor, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        drift = 0.0
        for name, param in model.named_parameters():
            if name in self.anchor:  # every rank gathers: ZeRO-3 needs them all
                master = safe_get_full_fp32_param(param).reshape(-1)[: self.anchor[name].numel()]
                drift = max(drift, (master - self.anchor[name].reshape(-1)).abs().max().item())
        self.drift = drift


def main() -> None:
    manifest, node_id, result = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    state = PartialState(cpu=True)
    ctx = node_context(manifest, node_id, state.is_main_process)
    branch, _ = load_model(ctx.inputs[ctx.node.inputs[0]])
    probe = MasterCopyDrift({name: param.detach()[0].clone() for name, param in branch.named_parameters()
                             if group_of(name) in ("expert", "router")})
    stage.train_stage(ctx, callbacks=[probe])
    if state.is_main_process:
        result.write_text(json.dumps({"master_anchor_drift": probe.drift}))


if __name__ == "__main__":
    main()
