"""Score a model on one domain's dataset with one metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from barctl.data.formats import FORMATS
from barctl.errors import BarctlError
from barctl.evaluate.generate import encode_prompt, generate, render_prompt
from barctl.evaluate.loss import token_loss
from barctl.manifest.recipe import EVAL_COLUMNS, EVAL_FORMATS
from barctl.rewards import resolve
from barctl.rewards.refusal import harmful_flag

# The manifest's validation (torch-free) owns the tables of formats and columns per metric.
METRIC_FORMATS: dict[str, tuple[str, ...]] = EVAL_FORMATS
METRIC_COLUMNS: dict[str, tuple[str, ...]] = EVAL_COLUMNS
METRICS: tuple[str, ...] = tuple(EVAL_FORMATS)
GENERATIVE: tuple[str, ...] = tuple(m for m in METRICS if m != "loss")  # named after their rewards
SAMPLES = 3  # rows shown in a result for a human to read


def evaluate_domain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset,
                    metric: str, *, max_new_tokens: int = 256, batch_size: int = 8, max_length: int = 1024,
                    progress: Callable[[int], None] | None = None,
                    judge: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score `model` on `dataset` (already in barctl's canonical columns) with `metric`.

    Every result has `score` (in [0, 1], higher is better), `n` (rows scored) and `rows`
    (each row's result, from which `barctl.evaluate.intervals` draws the score's interval:
    its reward for generative metrics, [summed negative log-likelihood, target tokens] for loss).

    Generative metrics (math_answer, tool_call, refusal, code_tests) decode greedily and
    score each completion with barctl's reward function of that name: `score` is the
    mean reward (for code_tests, pass@1). They add `truncated` (prompts longer than
    `max_length` tokens, which keep their last tokens) and `samples` (the first rows'
    prompt as the model sees it, completion and reward). refusal adds `refusal_rate`
    and `over_refusal_rate` (share of refusals among harmful and among benign rows,
    null when there are none) and the `harmful` and `benign` row counts; with a `judge`
    (`barctl.rewards.judge`, its path absolute) a judge model decides what a refusal is.

    loss adds `loss` (mean negative log-likelihood per target token, see
    `barctl.evaluate.loss`), `perplexity` (exp(loss)), `tokens` and `truncated`; its
    `score` is exp(-loss), the geometric mean probability of a target token, so that
    it lies in [0, 1] and rises as the loss falls.

    `progress` gets the number of rows done after each batch.
    """
    fmt = dataset_format(dataset, metric)
    if len(dataset) == 0:
        raise BarctlError(f"{metric}: the dataset has no rows")
    report = progress or (lambda done: None)

    if metric == "loss":
        result = token_loss(model, tokenizer, dataset.to_list(), fmt, batch_size=batch_size, max_length=max_length,
                            progress=report)
        return {"score": math.exp(-result["loss"]), "n": len(dataset), **result,
                "perplexity": math.exp(result["loss"])}
    return _generative(model, tokenizer, dataset, metric, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       max_length=max_length, progress=report, judge=judge)


def dataset_format(dataset: datasets.Dataset, metric: str) -> str:
    """The first of `metric`'s formats whose columns `dataset` has; BarctlError when none fits."""
    if metric not in METRICS:
        raise BarctlError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    present = set(dataset.column_names)
    missing = [c for c in METRIC_COLUMNS[metric] if c not in present]
    fmt = next((f for f in METRIC_FORMATS[metric] if set(FORMATS[f]) <= present), None)
    if fmt is None or missing:
        wanted = " or ".join(f"{f} ({', '.join(FORMATS[f])})" for f in METRIC_FORMATS[metric])
        extra = f" plus {', '.join(METRIC_COLUMNS[metric])}" if METRIC_COLUMNS[metric] else ""
        raise BarctlError(f"{metric}: the dataset needs the columns of {wanted}{extra}; "
                          f"it has {', '.join(dataset.column_names) or '(none)'}")
    return fmt


def _generative(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset, metric: str,
                *, max_new_tokens: int, batch_size: int, max_length: int,
                progress: Callable[[int], None], judge: Mapping[str, Any] | None) -> dict[str, Any]:
    prompts = list(dataset["prompt"])
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        completions += generate(model, tokenizer, prompts[start : start + batch_size],
                                max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=max_length)
        progress(len(completions))
    # as in TRL's GRPO: every column but the prompt and completion reaches the reward function
    columns = {name: list(dataset[name]) for name in dataset.column_names if name not in ("prompt", "completion")}
    rewards = resolve(metric, judge)(prompts=prompts, completions=completions, **columns)
    result = {
        "score": sum(rewards) / len(rewards),
        "n": len(rewards),
        "rows": [float(reward) for reward in rewards],
        "truncated": sum(len(encode_prompt(tokenizer, prompt)) > max_length for prompt in prompts),
        "samples": [
            {"prompt": render_prompt(tokenizer, prompt), "completion": completion, "reward": float(reward)}
            for prompt, completion, reward in zip(prompts[:SAMPLES], completions, rewards)
        ],
    }
    if metric == "refusal":
        result.update(refusal_rates(rewards, columns["harmful"]))
    return result


def refusal_rates(rewards: list[float], harmful: list[Any]) -> dict[str, Any]:
    """Share of refusals among harmful rows and among benign rows (None where there are none), and their counts.

    The refusal reward is 1 for a harmful row whose reply refused and for a benign row whose reply did not.
    """
    refused: dict[bool, list[bool]] = {True: [], False: []}
    for reward, flag in zip(rewards, harmful, strict=True):
        is_harmful = harmful_flag(flag)
        refused[is_harmful].append((reward == 1.0) == is_harmful)

    def rate(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "refusal_rate": rate(refused[True]),
        "over_refusal_rate": rate(refused[False]),
        "harmful": len(refused[True]),
        "benign": len(refused[False]),
    }
