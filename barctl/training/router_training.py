"""Router training after the merge: only the router learns, on a stratified sample of the experts' SFT data.

BAR trains the merged model's router on 5% of every expert's SFT mix (2 epochs, lr 1e-4)
with everything else frozen. The sample is stratified: each expert contributes the same
share of its own mix, at least one row, so a small domain is not drowned by a big one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import SFTTrainer

from barctl.data.row_text import row_text
from barctl.errors import BarctlError
from barctl.manifest.recipe import STAGE_KINDS, Expert, Recipe
from barctl.model.router_weights import captured_router_logits
from barctl.training import common, sft
from barctl.training.sft import split_last_turn

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
    """`fraction` of each expert's SFT rows (at least one), as conversational prompt/completion; rows per expert
    (0 for an expert without SFT rows). BarctlError when no expert has any."""
    parts, counts = [], {}
    for expert in recipe.experts:
        mixes = [mix.map(as_prompt_completion, remove_columns=mix.column_names)
                 for mix in expert_mixes(recipe, expert, ("sft",))]
        rows = datasets.concatenate_datasets(mixes) if mixes else []
        if not len(rows):
            counts[expert.name] = 0
            continue
        picked = sample_rows(rows, max(1, round(fraction * len(rows))), seed, expert.name)
        parts.append(picked)
        counts[expert.name] = len(picked)
    if not parts:
        raise BarctlError("routing.train: no expert has SFT rows to train the router on")
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
                 output_dir: Path, say: Callable[[str], None], callbacks: Sequence[TrainerCallback] = (),
                 note: Callable[[str], None] | None = None):
    """Train `model`'s routers (the only parameters left trainable by the caller) with TRL's SFTTrainer.

    `callbacks`: extra TrainerCallbacks; `note`: log-file lines while a bar shows the progress."""
    trainer = build_router_trainer(model, tokenizer, dataset, train, output_dir)
    for callback in (common.Progress(say, METRIC, note), *callbacks):
        trainer.add_callback(callback)
    common.train(trainer, say)
    return trainer.state


def build_router_trainer(model, tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset,
                         train: dict[str, Any], output_dir: Path) -> RouterTrainer:
    """The SFT trainer for router training, with the balancing loss and the z-loss the recipe asks for."""
    model.config.router_aux_loss_coef = float(train["aux_loss_weight"])
    model.config.output_router_logits = train["aux_loss_weight"] > 0
    trainer = cast(RouterTrainer, sft.build_trainer({"training": train["training"]}, model, tokenizer, dataset,
                                                    output_dir, trainer_class=RouterTrainer))
    trainer.z_loss_weight = float(train.get("z_loss_weight", 0.0))
    return trainer


def router_z_loss(logits: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    """The router z-loss (ST-MoE): per layer, the mean over real tokens of logsumexp(router logits)^2; summed
    over layers, as OLMo-core (BAR's training code) does. `logits`: per layer [tokens, experts]; `mask`: 1 on
    real tokens, any shape with `tokens` elements, or None when every token is real."""
    real = None if mask is None else mask.reshape(-1).bool()
    return torch.stack([(layer if real is None else layer[real]).logsumexp(dim=-1).square().mean()
                        for layer in logits]).sum()


class RouterTrainer(SFTTrainer):
    """TRL's SFTTrainer, plus `z_loss_weight` times the router z-loss on every training batch."""

    z_loss_weight = 0.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self.z_loss_weight and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        unwrapped = self.accelerator.unwrap_model(model)
        with captured_router_logits(unwrapped) as logits:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        # the first forward's routers: with return_outputs TRL runs a second, gradient-free one
        z_loss = router_z_loss(logits[: len(unwrapped.model.layers)], inputs.get("attention_mask"))
        # as TRL does for the balancing loss: with num_items_in_batch the Trainer leaves gradient accumulation
        # to the loss, so this per-batch mean is divided by the accumulation steps here
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        loss = loss + self.z_loss_weight * z_loss / steps
        return (loss, *result[1:]) if return_outputs else loss
