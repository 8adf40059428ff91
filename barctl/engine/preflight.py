"""Checks that need to look at models and data, run by `plan` before anything trains.

They read configs, safetensors headers (never weights) and every row of local data (each
file once per content), so a refusal (an unsupported family, a truncated model file, a
bad row 300) comes before any work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from barctl.data.files import resolve_files, where
from barctl.data.rows import RowsChecked
from barctl.data.spec_check import check_dataset
from barctl.engine.baselines import baseline_issues
from barctl.engine.graph import stage_datasets
from barctl.errors import BarctlError, Issue, UnsupportedModel
from barctl.evaluate.lm_eval_tasks import plan_issues as lm_eval_issues
from barctl.manifest.recipe import EVAL_COLUMNS, Recipe
from barctl.manifest.sections import EvalDomain
from barctl.manifest.yamlload import YamlPath
from barctl.model.families import family_for
from barctl.model.source import describe
from barctl.rewards.grader_checks import grader_issues

SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers")


def plan_issues(recipe: Recipe) -> list[Issue]:
    return (_model_issues(recipe) + _data_issues(recipe) + _training_issues(recipe) + _report_to_issues(recipe)
            + grader_issues(recipe) + _sandbox_issues(recipe) + _baseline_issues(recipe)
            + lm_eval_issues(recipe))


def _baseline_issues(recipe: Recipe) -> list[Issue]:
    if not recipe.baselines:
        return []
    try:
        anchor = describe(recipe.resolve_source(recipe.anchor))
    except BarctlError:  # _model_issues says why, at base.anchor
        return []
    return baseline_issues(recipe, anchor)


def _sandbox_issues(recipe: Recipe) -> list[Issue]:
    """Model-written code (code_tests) where the sandbox cannot isolate it, unless the manifest allows that."""
    domains = recipe.evals.get("domains", {})
    uses: list[YamlPath] = [("evals", "domains", domain, "metric")
                            for domain, spec in domains.items() if spec["metric"] == "code_tests"]
    uses += [("experts", expert.name, "stages", index, "rewards", number, "name")
             for expert in recipe.experts for index, stage in enumerate(expert.stages)
             for number, reward in enumerate(stage.rewards) if reward["name"] == "code_tests"]
    if not uses or recipe.sandbox_isolation == "best_effort":
        return []
    from barctl.rewards.sandbox import UNISOLATED, namespaces_available

    return [] if namespaces_available() else [recipe.issue(where, UNISOLATED) for where in uses]


def _model_issues(recipe: Recipe) -> list[Issue]:
    try:
        anchor = describe(recipe.resolve_source(recipe.anchor))
    except BarctlError as error:
        return [recipe.issue(("base", "anchor"), str(error))]
    issues = [recipe.issue((*where, "path"), problem) for where, source in
              ((("base", "anchor"), recipe.anchor), (("base", "pretrained"), recipe.pretrained))
              for problem in _weights_problems(recipe, source)]
    try:
        family_for(anchor, recipe.output["architecture"])
    except UnsupportedModel as error:
        issues.append(recipe.issue(("base", "anchor"), str(error)))
    if recipe.pretrained is not None:
        try:
            pretrained = describe(recipe.resolve_source(recipe.pretrained))
        except BarctlError as error:
            return issues + [recipe.issue(("base", "pretrained"), str(error))]
        mismatched = [f"{f} {pretrained.get(f)} vs {anchor.get(f)}" for f in SHAPE_FIELDS
                      if pretrained.get(f) != anchor.get(f)]
        if mismatched:
            issues.append(recipe.issue(
                ("base", "pretrained"),
                "its FFN cannot seed experts of the anchor's shape: " + ", ".join(mismatched),
            ))
    return issues


def _weights_problems(recipe: Recipe, source: Mapping[str, Any] | None) -> list[str]:
    """A local model directory's safetensors files checked whole (header against size) before anything is stored."""
    from barctl.model.hfdir import safetensors_problem

    if not source or "path" not in source or not recipe.resolve(source["path"]).is_dir():
        return []
    files = sorted(recipe.resolve(source["path"]).glob("*.safetensors"))
    return [problem for problem in map(safetensors_problem, files) if problem]


def _read_datasets(recipe: Recipe) -> dict[str, tuple[str, ...]]:
    """Every dataset a stage or an evaluation reads, with the columns its evaluation metrics need."""
    required: dict[str, set[str]] = {name: set() for expert in recipe.experts for stage in expert.stages
                                     for name in stage_datasets(stage)}
    for domain in _dataset_domains(recipe).values():
        required.setdefault(domain["dataset"], set()).update(EVAL_COLUMNS[domain["metric"]])
    return {name: tuple(sorted(columns)) for name, columns in sorted(required.items())}


def _data_issues(recipe: Recipe) -> list[Issue]:
    issues = []
    checked = RowsChecked(recipe.state_dir)
    for name, columns in _read_datasets(recipe).items():
        spec = recipe.dataset_spec(name)
        problems = check_dataset(spec, columns) or _row_problems(checked, spec, columns)
        issues += [recipe.issue(("datasets", name), problem) for problem in problems]
    checked.save()
    return issues


def plan_warnings(recipe: Recipe) -> list[Issue]:
    """What plan accepts but a user likely did not mean: counts above a dataset's rows (rows
    repeat), evaluations on data a stage trains on, generations longer than the anchor's context."""
    return _count_warnings(recipe) + _eval_data_warnings(recipe) + _context_warnings(recipe)


def _count_warnings(recipe: Recipe) -> list[Issue]:
    checked, columns = RowsChecked(recipe.state_dir), _read_datasets(recipe)
    warnings = []
    for expert in recipe.experts:
        for index, stage in enumerate(expert.stages):
            for number, source in enumerate(stage.mix["sources"] if stage.mix else []):
                rows = _dataset_rows(checked, recipe.dataset_spec(source["dataset"]), columns[source["dataset"]])
                if source.get("count") and rows and source["count"] > rows:
                    warnings.append(recipe.issue(
                        ("experts", expert.name, "stages", index, "mix", "sources", number, "count"),
                        f"count {source['count']} is above the {rows} rows of '{source['dataset']}': "
                        f"each row repeats about {source['count'] / rows:.1f} times"))
    return warnings


def _dataset_rows(checked: RowsChecked, spec: dict, columns: tuple[str, ...]) -> int | None:
    """A local dataset's rows, as counted when its files were checked (None when unknown)."""
    if spec.get("hub"):
        return None
    counts = [checked.rows(file, spec["format"], spec.get("columns") or {}, columns) for file in resolve_files(spec)]
    known = [c for c in counts if c is not None]
    return sum(known) if len(known) == len(counts) else None


def _eval_data_warnings(recipe: Recipe) -> list[Issue]:
    trained: dict[str, str] = {}
    for expert in recipe.experts:
        for stage in expert.stages:
            for name in stage_datasets(stage):
                trained.setdefault(name, f"experts.{expert.name}.{stage.name}")
    return [recipe.issue(("evals", "domains", domain, "dataset"),
                         f"{spec['dataset']!r} is also training data ({trained[spec['dataset']]}): "
                         "the score measures memorisation, not the domain")
            for domain, spec in _dataset_domains(recipe).items() if spec["dataset"] in trained]


def _dataset_domains(recipe: Recipe) -> dict[str, EvalDomain]:
    """The evaluation domains that read a dataset of the manifest (lm_eval domains read their task's)."""
    return {name: spec for name, spec in recipe.evals.get("domains", {}).items() if "dataset" in spec}


def _context_warnings(recipe: Recipe) -> list[Issue]:
    context = describe(recipe.resolve_source(recipe.anchor)).get("max_position_embeddings")
    warnings = []
    for domain, spec in _dataset_domains(recipe).items():
        generation = spec["generation"]
        if context and generation["max_length"] + generation["max_new_tokens"] > context:
            warnings.append(recipe.issue(("evals", "domains", domain),
                f"prompts of up to {generation['max_length']} tokens plus max_new_tokens "
                f"{generation['max_new_tokens']} exceed the anchor's context of {context} tokens"))
    return warnings


def _row_problems(checked: RowsChecked, spec: dict, columns: tuple[str, ...]) -> list[str]:
    """Every row of a local dataset (its first records passed already), once per file content."""
    if spec.get("hub"):
        return []
    mapping = spec.get("columns") or {}
    return [f"{where(spec, file)}: {problem}" for file in resolve_files(spec)
            for problem in checked.problems(file, spec["format"], mapping, columns)]


def _training_issues(recipe: Recipe) -> list[Issue]:
    from barctl.training.trl_fields import passthrough_problems

    issues = []
    for expert in recipe.experts:
        for index, stage in enumerate(expert.stages):
            where = ("experts", expert.name, "stages", index, "training", "trl")
            for name, problem in passthrough_problems(stage.kind, stage.training.get("trl", {})).items():
                issues.append(recipe.document.issue(where + (name,), problem, at_key=True))
    return issues + _vllm_issues(recipe)


def _vllm_issues(recipe: Recipe) -> list[Issue]:
    """`use_vllm` on a stage that does not generate (only GRPO does; a project-wide setting reaches GRPO stages
    only), or without the vllm package, where the manifest says it."""
    import importlib.util

    issues: dict[YamlPath, Issue] = {}
    for expert in recipe.experts:
        for index, stage in enumerate(expert.stages):
            own: YamlPath = ("experts", expert.name, "stages", index, "training", "use_vllm")
            if not stage.training.get("use_vllm"):
                continue
            if stage.kind != "grpo" and own in recipe.document.positions:
                issues[own] = recipe.issue(own, f"use_vllm generates GRPO completions; a {stage.kind} stage "
                                                "does not generate")
            elif stage.kind == "grpo" and importlib.util.find_spec("vllm") is None:
                path = own if own in recipe.document.positions else ("training", "use_vllm")
                issues[path] = recipe.issue(path, "use_vllm needs the vllm package, which is not installed: "
                                                  "pip install vllm (or remove use_vllm to generate with transformers)")
    return list(issues.values())


# report_to integrations and the packages transformers needs for them (any one of them)
REPORT_TO_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}


def _report_to_issues(recipe: Recipe) -> list[Issue]:
    """A `report_to` naming an integration whose package is not installed, where the manifest says it
    (the stage's own setting, or the project-wide one it inherits)."""
    import importlib.util

    places: list[tuple[YamlPath, dict[str, Any]]] = [(("experts", expert.name, "stages", index, "training"),
                                                      stage.training)
              for expert in recipe.experts for index, stage in enumerate(expert.stages)]
    if recipe.routing["train"] is not None:
        places.append((("routing", "train", "training"), recipe.routing["train"]["training"]))
    issues = {}
    for at, training in places:
        path: YamlPath = (*at, "report_to")
        if path not in recipe.document.positions:
            path = ("training", "report_to")
        value = training.get("report_to") or []
        for integration in [value] if isinstance(value, str) else value:
            packages = REPORT_TO_PACKAGES.get(integration, ())
            if packages and not any(importlib.util.find_spec(p) for p in packages):
                issues[path, integration] = recipe.document.issue(
                    path, f"report_to {integration!r} needs the {packages[0]} package, which is not installed: "
                          f"pip install {packages[0]}")
    return list(issues.values())
