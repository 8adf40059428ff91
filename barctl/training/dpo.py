"""`dpo`: preference pairs (prompt, chosen, rejected) against a frozen reference (DPOTrainer).

With `ref_model=None`, TRL loads the reference afresh from the policy's checkpoint
directory: a separate, frozen model that never gets barctl's freezing hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer

from barctl.training.common import trl_config

METRIC = "loss"


def build_trainer(config: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  dataset: datasets.Dataset, output_dir: Path) -> DPOTrainer:
    args = trl_config(DPOConfig, config["training"], output_dir,
                      defaults={"include_num_input_tokens_seen": "non_padding"})
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer)
