"""Score a loaded model on an lm-evaluation-harness task, through lm-eval's own Python API.

The score is the task's primary metric as lm-eval reports it: the one the domain names in
`task_metric` (e.g. `exact_match,strict-match`), else the first metric lm-eval lists for the task.
Each row is a document's value of that metric (from lm-eval's logged samples, for a group from all its
tasks); when the score is their mean (accuracy, exact match, pass@1) barctl's intervals draw on them
like any other metric's rows. A score that is no mean of rows (corpus-level metrics such as BLEU, or a
group's unweighted mean) keeps one row [score, stderr], lm-eval's standard error, from which
`barctl.evaluate.intervals` draws a normal interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from barctl.errors import BarctlError
from barctl.evaluate.intervals import RESAMPLES
from barctl.evaluate.lm_eval_tasks import task_config, task_yaml, version
from barctl.evaluate.metrics import SAMPLES
from barctl.manifest.schema import defaults

_NOT_METRICS = ("name", "alias", "sample_len", "samples")


def evaluate_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, domain: dict[str, Any],
                  include_path: Path | None) -> dict[str, Any]:
    """Run the domain's lm-eval task (`task`, `num_fewshot`, `limit`, `task_metric`, `apply_chat_template`,
    `unsafe_code`) on `model`, its batch size the domain's generation batch size."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    settings = task_settings(domain)
    manager, spec = _task(domain["task"], include_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=domain["generation"]["batch_size"])
    try:
        output = simple_evaluate(
            model=lm, tasks=[spec], task_manager=manager, num_fewshot=domain.get("num_fewshot"),
            limit=domain["limit"], bootstrap_iters=RESAMPLES, log_samples=True,
            apply_chat_template=settings["apply_chat_template"],
            confirm_run_unsafe_code=settings["unsafe_code"],
        )
    except ValueError as error:
        if "unsafe" in str(error).lower():
            raise BarctlError(f"{domain['task']}: lm-eval runs the model's code for this task outside barctl's "
                              "sandbox; set unsafe_code: true on the domain to allow it") from error
        raise
    return task_result(output, domain["task"], domain.get("task_metric"))


def _task(task: str, include_path: Path | None) -> tuple[Any, str | dict[str, Any]]:
    """lm-eval's task manager (only the local folder's tasks when there is one) and what to load from it."""
    from lm_eval.tasks import TaskManager

    if include_path is None:
        return TaskManager(), task
    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    yaml_path = task_yaml(task, include_path)
    config = task_config(yaml_path) if yaml_path is not None else None
    return manager, config or task


def task_settings(domain: Mapping[str, Any]) -> dict[str, Any]:
    """The domain with the schema's defaults filled in (the recipe keeps lm_eval domains as written, so that
    their keys stay as they were)."""
    return {**defaults("$defs", "eval_domain"), **domain}


def task_result(output: dict[str, Any], task: str, task_metric: str | None) -> dict[str, Any]:
    """barctl's result of an lm-eval run: score, n, rows, the metric, its stderr, and a few samples."""
    reported = output["results"][task]
    metrics = [key for key in reported if key not in _NOT_METRICS and "_stderr," not in key]
    chosen = task_metric or (metrics[0] if metrics else None)
    if chosen is None or chosen not in metrics:
        raise BarctlError(f"{task}: lm-eval reports no metric {chosen!r}; it reports {', '.join(metrics) or 'none'}")
    name, kept = chosen.split(",", 1)
    higher = _higher_is_better(output, task, name)
    if higher is False:
        raise BarctlError(f"{task}: lower {name} is better, and barctl's scores rise with quality; "
                          f"choose another with task_metric: one of {', '.join(metrics)}")
    score = float(reported[chosen])
    stderr = reported.get(f"{name}_stderr,{kept}")
    stderr = float(stderr) if isinstance(stderr, (int, float)) else None
    samples = [sample for subtask in _leaves(output, task) for sample in output["samples"].get(subtask, [])
               if sample.get("filter") == kept and name in sample]
    values = [float(sample[name]) for sample in samples]
    is_mean = bool(values) and math.isclose(sum(values) / len(values), score, rel_tol=1e-9, abs_tol=1e-12)
    return {
        "score": score,
        "n": len(values) if is_mean else sum(output["n-samples"].get(t, {}).get("effective", 0)
                                             for t in _leaves(output, task)),
        "rows": values if is_mean else [[score, stderr or 0.0]],
        "task_metric": chosen,
        "stderr": stderr,
        "lm_eval": version(),
        "samples": [{"prompt": _prompt(sample), "target": str(sample.get("target")),
                     "response": str(sample.get("filtered_resps")), "value": float(sample[name])}
                    for sample in samples[:SAMPLES]],
    }


def _leaves(output: dict[str, Any], task: str) -> list[str]:
    """The task itself, or a group's tasks (recursively)."""
    children = output.get("group_subtasks", {}).get(task)
    if not children:
        return [task]
    return [leaf for child in children for leaf in _leaves(output, child)]


def _higher_is_better(output: dict[str, Any], task: str, name: str) -> bool | None:
    for leaf in [task, *_leaves(output, task)]:
        known = output.get("higher_is_better", {}).get(leaf, {}).get(name)
        if known is not None:
            return bool(known)
    return None


def _prompt(sample: dict[str, Any]) -> str:
    """The context lm-eval gave the model for the document's first request."""
    arguments = sample.get("arguments")
    first = arguments[0] if isinstance(arguments, list) and arguments else arguments
    if isinstance(first, (list, tuple)) and first:
        return str(first[0])
    if isinstance(first, dict):
        return str(next(iter(first.values()), ""))
    return str(first)
