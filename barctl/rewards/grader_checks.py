"""Plan-time checks of the graders a manifest names: their columns, their judges, their extras.

They read file names and the first records of datasets only, and import neither torch
nor the graders' optional packages, so `plan` refuses a grader that cannot run before
anything trains, each problem at its YAML location.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from barctl.data.files import resolve_files
from barctl.data.peek import PeekError, peek
from barctl.engine.graph import stage_datasets
from barctl.errors import BarctlError, Issue
from barctl.manifest.recipe import EVAL_COLUMNS, Recipe
from barctl.manifest.yamlload import YamlPath
from barctl.rewards.judge import judge_settings
from barctl.rewards.symbolic import EXTRA_HINT, available


def grader_issues(recipe: Recipe) -> list[Issue]:
    """Every problem of the manifest's evaluation metrics and GRPO rewards."""
    issues = []
    where: YamlPath
    for domain, spec in recipe.evals.get("domains", {}).items():
        where = ("evals", "domains", domain)
        issues += _grader_issues(recipe, where, "metric", spec["metric"], spec.get("judge"))
    for expert in recipe.experts:
        for index, stage in enumerate(expert.stages):
            for number, reward in enumerate(stage.rewards):
                where = ("experts", expert.name, "stages", index, "rewards", number)
                issues += _grader_issues(recipe, where, "name", reward["name"], reward.get("judge"))
                issues += _column_issues(recipe, where + ("name",), reward["name"], stage_datasets(stage))
    return issues


def _grader_issues(recipe: Recipe, where: YamlPath, field: str, name: str, judge: Mapping[str, Any] | None
                   ) -> list[Issue]:
    issues = []
    if name == "math_verify" and not available():
        issues.append(recipe.issue(where + (field,), EXTRA_HINT))
    if judge is not None:
        if name != "refusal":
            issues.append(recipe.document.issue(where + ("judge",), f"a judge goes with refusal only, not {name}",
                                                at_key=True))
        else:
            issues += [recipe.issue(where + ("judge",) + key, problem)
                       for key, problem in judge_problems(judge, recipe.resolve(judge["path"]))]
    return issues


def judge_problems(judge: Mapping[str, Any], path: Path) -> list[tuple[YamlPath, str]]:
    """(key within the judge, problem) for each setting the judge cannot run with."""
    settings = judge_settings(judge)
    problems: list[tuple[YamlPath, str]] = []
    if not path.is_dir():
        problems.append((("path",), f"no model directory at {path}"))
    if settings["kind"] == "classifier" and "refusal_labels" not in judge:
        problems.append(((), "a classifier judge needs refusal_labels: the labels that mean the reply refused"))
    if settings["kind"] == "causal":
        if "refusal_pattern" not in judge:
            problems.append(((), "a causal judge needs refusal_pattern: what its verdict says when the reply refused"))
        if "template" not in judge:
            problems.append(((), "a causal judge needs a template: its prompt, with {prompt} and {response}"))
    if "refusal_pattern" in judge:
        try:
            re.compile(judge["refusal_pattern"])
        except re.error as error:
            problems.append((("refusal_pattern",), f"not a regular expression: {error}"))
    try:
        filled = settings["template"].format(prompt="\0", response="\1")
    except (KeyError, IndexError, ValueError) as error:
        problems.append((("template",), f"fields other than {{prompt}} and {{response}}: {error!r}"))
    else:
        if "\1" not in filled:
            problems.append((("template",), "the template never shows the judge the {response}"))
    return problems


def _column_issues(recipe: Recipe, where: YamlPath, reward: str, datasets: list[str]) -> list[Issue]:
    """A built-in reward whose columns a dataset of its stage lacks."""
    issues = []
    for name in datasets:
        spec = recipe.dataset_spec(name)
        columns = _columns(spec)
        if columns is None:
            continue
        mapping = spec.get("columns") or {}
        missing = [mapping.get(c, c) for c in EVAL_COLUMNS.get(reward, ()) if mapping.get(c, c) not in columns]
        if missing:
            issues.append(recipe.issue(where, f"reward {reward} reads the column {', '.join(map(repr, missing))} of "
                                              f"each row, which dataset '{name}' lacks; its columns are: "
                                              f"{', '.join(columns) or '(none)'}"))
    return issues


def _columns(spec: dict[str, Any]) -> list[str] | None:
    """The columns of a local dataset's first file; None when unknown (hub data, or a problem reported elsewhere)."""
    if spec.get("hub"):
        return None
    try:
        return peek(resolve_files(spec)[0])[0]
    except (BarctlError, PeekError, OSError, IndexError):
        return None
