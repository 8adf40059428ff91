"""`midtrain`: causal language modelling on `text`, packed into `max_length` blocks (SFTTrainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from barctl.training.common import trl_config
from barctl.training.tokenized import skip_preparation

METRIC = "loss"


def build_trainer(config: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  dataset: datasets.Dataset, output_dir: Path, prepared: bool = False) -> SFTTrainer:
    """`prepared`: `dataset` is what an earlier trainer prepared (barctl.training.tokenized), used as is."""
    args = trl_config(SFTConfig, config["training"], output_dir, defaults={
        "dataset_text_field": "text",
        "packing": True,
        # Split documents longer than a block instead of truncating them: mid-training keeps every token.
        "packing_strategy": "bfd_split",
        "include_num_input_tokens_seen": "non_padding",
    })
    if prepared:
        skip_preparation(args)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
