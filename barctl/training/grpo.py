"""`grpo`: RL with verifiable rewards, without a KL term (beta 0, as BAR), through GRPOTrainer.

`training.max_length` caps the generated completions (GRPOConfig has no max_length);
`trl: {max_completion_length: ...}` overrides it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import GRPOConfig, GRPOTrainer

from barctl.training.common import trl_config

METRIC = "reward"


def build_trainer(config: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  dataset: datasets.Dataset, output_dir: Path) -> GRPOTrainer:
    from barctl.rewards import resolve

    rewards = config["rewards"]
    training = config["training"]
    args = trl_config(GRPOConfig, training, output_dir, defaults={
        "beta": 0.0,
        "num_generations": 4,
        "max_completion_length": training.get("max_length") or 256,
    }, fixed={"reward_weights": [float(r["weight"]) for r in rewards]})
    return GRPOTrainer(model=model, reward_funcs=[resolve(r["name"], r.get("judge")) for r in rewards], args=args,
                       train_dataset=dataset, processing_class=tokenizer)
