"""`sft`: supervised fine-tuning with the loss on the assistant's (or the completion's) tokens only.

`prompt_completion` data: TRL's completion-only loss. `messages` data: TRL's
`assistant_only_loss` when the chat template has `{% generation %}` markers or TRL knows
a training version of it; otherwise (e.g. a plain ChatML template) each conversation is
split at its last assistant turn into prompt and completion, so the loss falls on that
final turn only (earlier assistant turns are context).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import get_training_chat_template

from barctl.errors import BarctlError
from barctl.training.common import trl_config
from barctl.training.tokenized import skip_preparation

METRIC = "loss"


def build_trainer(config: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  dataset: datasets.Dataset, output_dir: Path,
                  trainer_class: type[SFTTrainer] = SFTTrainer, prepared: bool = False) -> SFTTrainer:
    """`prepared`: `dataset` is what an earlier trainer prepared (barctl.training.tokenized), used as is."""
    defaults: dict[str, Any] = {"include_num_input_tokens_seen": "non_padding"}
    if "messages" in dataset.column_names:
        if masks_assistant_turns(tokenizer):
            defaults["assistant_only_loss"] = True
        else:
            dataset = dataset.map(split_last_turn, remove_columns="messages")
    args = trl_config(SFTConfig, config["training"], output_dir, defaults=defaults)
    if prepared:
        skip_preparation(args)
    return trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def masks_assistant_turns(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether TRL can mark the assistant's tokens with this tokenizer's chat template."""
    if not tokenizer.chat_template:
        return False
    try:
        get_training_chat_template(tokenizer)
    except ValueError:  # TRL has no training version of this template
        return False
    return True


def split_last_turn(row: dict[str, Any]) -> dict[str, Any]:
    """A conversation as prompt (everything before its last assistant turn) and completion (that turn)."""
    messages = row["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise BarctlError("an SFT conversation has no assistant turn to learn from")
    return {"prompt": messages[:last], "completion": [messages[last]]}
