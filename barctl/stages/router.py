"""Router training after the merge: only the router learns, on a stratified sample of the experts' SFT data.

BAR trains the merged model's router on 5% of every expert's SFT mix (2 epochs, lr 1e-4)
with everything else frozen. The sample is stratified: each expert contributes the same
share of its own mix, at least one row, so a small domain is not drowned by a big one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase, TrainerCallback

from barctl.data.text import row_text
from barctl.recipe import STAGE_KINDS, Expert, Recipe
from barctl.stages import common
from barctl.stages.sft import split_last_turn

METRIC = "loss"


def sample_rows(rows: datasets.Dataset, count: int, seed: int, label: str) -> datasets.Dataset:
    """`count` rows drawn without replacement, the same for the same seed and label."""
    generator = np.random.default_rng([seed, *label.encode()])
    picked = np.sort(generator.choice(len(rows), size=min(count, len(rows)), replace=False))
    return rows.select(picked.tolist())


def expert_mixes(recipe: Recipe, expert: Expert, kinds: tuple[str, ...]) -> list[datasets.Dataset]:
    return [common.stage_dataset(recipe, stage.mix) for stage in expert.stages
            if stage.kind in kinds and stage.mix is not None]


def routing_sample(recipe: Recipe, fraction: float, seed: int) -> tuple[datasets.Dataset, dict[str, int]]:
    """`fraction` of each expert's SFT rows (at least one), as conversational prompt/completion; rows per expert."""
    parts, counts = [], {}
    for expert in recipe.experts:
        mixes = [mix.map(as_prompt_completion, remove_columns=mix.column_names)
                 for mix in expert_mixes(recipe, expert, ("sft",))]
        if not mixes:
            continue
        rows = datasets.concatenate_datasets(mixes)
        picked = sample_rows(rows, max(1, round(fraction * len(rows))), seed, expert.name)
        parts.append(picked)
        counts[expert.name] = len(picked)
    sample = datasets.concatenate_datasets(parts).shuffle(seed=seed)
    return sample, counts


def as_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    """An SFT row as a conversational prompt and completion (the last assistant turn), so that mixes of
    `messages` and `prompt_completion` experts train together."""
    if row.get("messages") is not None:
        return split_last_turn(row)
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return {"prompt": prompt, "completion": completion}


def expert_texts(recipe: Recipe, expert: Expert, tokenizer: PreTrainedTokenizerBase, count: int,
                 seed: int) -> list[str]:
    """`count` rows (or all, when fewer) of the expert's stage data, every stage with a mix pooled, as the
    text the model reads."""
    texts: list[str] = []
    for mix in expert_mixes(recipe, expert, STAGE_KINDS):
        texts += [row_text(tokenizer, row) for row in sample_rows(mix, count, seed, expert.name)]
    generator = np.random.default_rng([seed, *expert.name.encode()])
    return [texts[i] for i in sorted(generator.choice(len(texts), size=min(count, len(texts)), replace=False))]


def train_router(model, tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset, train: dict[str, Any],
                 output_dir: Path, say: Callable[[str], None], callbacks: Sequence[TrainerCallback] = ()):
    """Train `model`'s routers (the only parameters left trainable by the caller) with TRL's SFTTrainer.

    `callbacks`: extra TrainerCallbacks."""
    from barctl.stages import sft

    model.config.router_aux_loss_coef = float(train["aux_loss_weight"])
    model.config.output_router_logits = train["aux_loss_weight"] > 0
    trainer = sft.build_trainer({"training": train["training"]}, model, tokenizer, dataset, output_dir)
    for callback in (common.Progress(say, METRIC), *callbacks):
        trainer.add_callback(callback)
    common.train(trainer, say)
    return trainer.state
