"""Manifest loading: safe YAML, schema validation, semantic checks, the schema's defaults -> Recipe.

Every problem of a manifest is collected and reported at once, each with its YAML
path and line (torchtune-style), so a user fixes a manifest in one pass.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from barctl.errors import Issue, ManifestError
from barctl.evaluate.gate_rules import CI95, OWN_EXPERT
from barctl.manifest import schema
from barctl.manifest.paths import path_issues
from barctl.manifest.schema import did_you_mean, schema_issues
from barctl.manifest.sections import (
    DatasetSpec,
    EvalDomain,
    Evals,
    Gate,
    Judge,
    Launcher,
    Mix,
    ModelSource,
    Output,
    Reward,
    RouterTraining,
    Routing,
)
from barctl.manifest.semantics import run_issues, value_issues
from barctl.manifest.yamlload import LoadedYaml, load_yaml

STAGE_KINDS = ("midtrain", "sft", "dpo", "grpo")
FORMATS_FOR_KIND = {
    "midtrain": ("text",),
    "sft": ("messages", "prompt_completion"),
    "dpo": ("preference",),
    "grpo": ("prompt",),
}
SOURCE_KINDS = ("path", "hub", "package", "random")
# Evaluation metrics: the dataset formats each reads, and the extra columns its scorer needs.
EVAL_FORMATS = {
    "math_answer": ("prompt",),
    "math_verify": ("prompt",),
    "tool_call": ("prompt",),
    "refusal": ("prompt",),
    "code_tests": ("prompt",),
    "loss": ("text", "messages", "prompt_completion"),
}
EVAL_COLUMNS = {"math_answer": ("answer",), "math_verify": ("answer",), "tool_call": ("ground_truth",),
                "refusal": ("harmful",), "code_tests": ("tests",), "loss": ()}
LM_EVAL_FIELDS = ("task", "include_path", "num_fewshot", "task_metric", "apply_chat_template", "unsafe_code")
EVAL_MODELS = ("anchor", "experts", "merged")


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    mix: Mix | None
    trainable: tuple[str, ...]
    training: dict[str, Any]  # barctl's training settings; `trl` passes TRL config fields through
    rewards: tuple[Reward, ...]
    launcher: Launcher


@dataclass(frozen=True)
class Expert:
    name: str
    ffn: str  # "pretrained" or "anchor"
    seed: int
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class Recipe:
    """A validated manifest with every default filled in.

    Paths stay as written (relative to `root`), so that node keys do not depend on
    where the project is checked out; `resolve` turns them into absolute paths.
    """

    manifest_path: Path
    root: Path
    text: str
    name: str
    seed: int
    lockfile: Path
    anchor: ModelSource
    pretrained: ModelSource | None
    datasets: dict[str, DatasetSpec]
    experts: tuple[Expert, ...]
    routing: Routing
    output: Output
    document: LoadedYaml
    evals: Evals
    gates: tuple[Gate, ...]
    sandbox_isolation: str  # "required", or "best_effort": model code may run without namespaces
    store_remote: str | None  # store.remote: a shared artifact store (barctl.engine.remote)
    baselines: tuple[str, ...]  # "btx", "retrain": built next to BAR and evaluated in its table

    def resolve(self, relative: str) -> Path:
        return (self.root / relative).resolve()

    def resolve_source(self, source: ModelSource) -> ModelSource:
        """A model source with its local paths made absolute, for the runners."""
        resolved = source.copy()
        if "path" in source:
            resolved["path"] = str(self.resolve(source["path"]))
        if "random" in source:
            random = dict(source["random"])
            random["tokenizer"] = self.resolve_source(random["tokenizer"])
            resolved["random"] = random
        return resolved

    def dataset_spec(self, name: str) -> dict[str, Any]:
        """The dataset called `name`, its local `path` (if any) made absolute, for the loaders."""
        spec: dict[str, Any] = dict(self.datasets[name])
        if spec.get("path"):
            spec["path"] = str(self.resolve(spec["path"]))
        return spec

    def resolve_judge(self, spec: Mapping[str, Any]) -> Judge | None:
        """The `judge` of an evaluation domain or a reward, its model path made absolute; None without one."""
        judge = spec.get("judge")
        return None if judge is None else {**judge, "path": str(self.resolve(judge["path"]))}

    def issue(self, path: tuple, message: str) -> Issue:
        """An Issue located at a YAML path of this manifest."""
        return self.document.issue(path, message)

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.output["max_shard_size"])

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.output["dir"])

    @property
    def state_dir(self) -> Path:
        return self.root / ".barctl"

    def expert(self, name: str) -> Expert:
        return next(e for e in self.experts if e.name == name)


def load_recipe(manifest: Path) -> Recipe:
    """Load, validate and complete a manifest; raise ManifestError listing every problem."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(str(manifest), [Issue("", "no such manifest file")])
    loaded = load_yaml(manifest)
    issues = _dedupe(schema_issues(loaded) + semantic_issues(loaded, manifest.resolve().parent))
    if issues:
        raise ManifestError(loaded.filename, issues)
    return _build_recipe(loaded, manifest.resolve())


# -- semantic checks ----------------------------------------------------------------


def semantic_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    """Checks the schema cannot express: references, exclusive fields, files that must exist.

    They also run on a manifest with schema errors, so that every problem shows at once;
    a part too malformed to check is skipped, since the schema already reported it.
    """
    issues: list[Issue] = []
    for check in (_base_issues, _datasets_issues, _experts_issues, _routing_issues, path_issues,
                  _evals_issues, _gates_issues, value_issues, run_issues):
        try:
            issues += check(loaded, root)
        except (KeyError, TypeError, AttributeError, ValueError):
            continue
    return issues


def _base_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    base = loaded.data["base"]
    issues = _source_issues(loaded, root, ("base", "anchor"), base["anchor"])
    if "pretrained" in base:
        issues += _source_issues(loaded, root, ("base", "pretrained"), base["pretrained"])
        if "random" in base["pretrained"]:
            issues.append(loaded.issue(("base", "pretrained", "random"), "a pretrained FFN source cannot be random"))
    return issues


def _datasets_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    issues = []
    for name, spec in loaded.data.get("datasets", {}).items():
        issues += _dataset_issues(loaded, root, ("datasets", name), spec)
    return issues


def _experts_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    data = loaded.data
    issues: list[Issue] = []
    datasets = data.get("datasets", {})
    has_pretrained = "pretrained" in data.get("base", {})
    for expert_name, expert in data["experts"].items():
        where = ("experts", expert_name)
        if expert.get("ffn") == "pretrained" and not has_pretrained:
            issues.append(loaded.issue(where + ("ffn",), "ffn: pretrained needs base.pretrained"))
        seen: dict[str, int] = {}
        for index, stage in enumerate(expert.get("stages", [])):
            issues += _stage_issues(loaded, where + ("stages", index), stage, datasets)
            name = stage.get("name", stage["kind"])
            if name in seen:
                issues.append(loaded.issue(where + ("stages", index),
                    f"stage name '{name}' is used twice in this expert (stages[{seen[name]}] too); "
                    "give each a distinct `name`",
                ))
            seen[name] = index
    return issues


def _source_issues(loaded: LoadedYaml, root: Path, where: tuple, source: dict) -> list[Issue]:
    given = [k for k in SOURCE_KINDS if k in source]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        return [loaded.issue(where, f"give exactly one of path, hub, package or random (found: {found})")]
    kind = given[0]
    issues = []
    allowed = {"path": {"path", "gguf_file"}, "hub": {"hub", "revision", "gguf_file"},
               "package": {"package", "file"}, "random": {"random"}}[kind]
    for extra in sorted(set(source) - allowed):
        issues.append(loaded.issue(where + (extra,), f"'{extra}' does not go with '{kind}'", at_key=True))
    if kind == "package" and "file" not in source:
        issues.append(loaded.issue(where, "a package source needs `file`: the model file inside the package"))
    if kind == "path" and not (root / source["path"]).exists():
        issues.append(loaded.issue(where + ("path",), f"no such file or directory: {source['path']}"))
    if kind == "random":
        issues += _source_issues(loaded, root, where + ("random", "tokenizer"), source["random"]["tokenizer"])
    return issues


def _dataset_issues(loaded: LoadedYaml, root: Path, where: tuple, spec: dict) -> list[Issue]:
    if ("path" in spec) == ("hub" in spec):
        return [loaded.issue(where, "give exactly one of `path` (local files) or `hub` (a hub dataset id)")]
    issues = []
    if "path" in spec:
        for extra in ("revision", "subset"):
            if extra in spec:
                issues.append(loaded.issue(where + (extra,), f"'{extra}' only goes with `hub`", at_key=True))
        pattern = str(root / spec["path"])
        if not glob.glob(pattern):
            issues.append(loaded.issue(where + ("path",), f"no files match {spec['path']}"))
    return issues


def _stage_issues(loaded: LoadedYaml, where: tuple, stage: dict, datasets: dict) -> list[Issue]:
    kind = stage["kind"]
    issues = []
    mix = stage.get("mix")
    if mix is not None:
        uses_weight = False
        for index, source in enumerate(mix["sources"]):
            at = where + ("mix", "sources", index)
            amounts = [k for k in ("weight", "fraction", "count") if k in source]
            if len(amounts) != 1:
                issues.append(loaded.issue(at, "give exactly one of weight, fraction or count"))
            uses_weight |= "weight" in amounts
            name = source["dataset"]
            if name not in datasets:
                issues.append(loaded.issue(at + ("dataset",),
                    f"unknown dataset '{name}'{did_you_mean(name, sorted(datasets))}",
                ))
            elif datasets[name]["format"] not in FORMATS_FOR_KIND[kind]:
                wanted = " or ".join(FORMATS_FOR_KIND[kind])
                issues.append(loaded.issue(at + ("dataset",),
                    f"dataset '{name}' has format {datasets[name]['format']}; a {kind} stage needs {wanted}",
                ))
        if uses_weight and "size" not in mix:
            issues.append(loaded.issue(where + ("mix",), "a mix with weights needs `size`: the total rows"))
    trainable = stage.get("trainable", [])
    if "all" in trainable and len(trainable) > 1:
        issues.append(loaded.issue(where + ("trainable",), "'all' already includes every other group"))
    if kind == "grpo" and "rewards" not in stage:
        issues.append(loaded.issue(where, "a grpo stage needs `rewards`"))
    if kind != "grpo" and "rewards" in stage:
        issues.append(loaded.issue(where + ("rewards",), f"rewards only go with grpo, not {kind}", at_key=True))
    return issues


def _routing_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    data = loaded.data
    routing = data.get("routing", {})
    experts = data["experts"]
    issues = []
    settings = {**schema.defaults("properties", "routing"), **routing}  # `name in routing` below: as written
    top_k = settings["top_k"]
    slots = len(experts) + 1
    if isinstance(top_k, int) and top_k > slots:
        issues.append(loaded.issue(("routing", "top_k"),
            f"top_k {top_k} exceeds the merged model's {slots} experts (the anchor and {slots - 1} domains)",
        ))
    init = settings["init"]
    for name, needs in (("prompts", "prompts"), ("init_samples", "embedding")):
        if name in routing and init != needs:
            issues.append(loaded.issue(("routing", name), f"{name} only goes with init: {needs}", at_key=True))
    if init == "prompts":
        prompts = routing.get("prompts", {})
        missing = [name for name in experts if name not in prompts]
        if missing:
            issues.append(loaded.issue(("routing", "prompts") if prompts else ("routing", "init"),
                "init: prompts needs routing.prompts for every expert; missing: " + ", ".join(missing)))
        for name in prompts:
            if name not in experts:
                issues.append(loaded.issue(("routing", "prompts", name),
                    f"unknown expert '{name}'{did_you_mean(name, sorted(experts))}", at_key=True))
    if init == "embedding":
        dataless = [name for name, spec in experts.items()
                    if not any(stage.get("mix") for stage in spec.get("stages", []))]
        if dataless:
            issues.append(loaded.issue(("routing", "init"),
                "init: embedding averages hidden states over each expert's stage data, but these experts "
                "have no stage with a mix: " + ", ".join(dataless)))
    if routing.get("train") is not None:
        with_sft = [name for name, spec in experts.items()
                    if any(stage.get("kind") == "sft" and stage.get("mix") for stage in spec.get("stages", []))]
        if not with_sft:
            issues.append(loaded.issue(("routing", "train"),
                "router training samples the experts' SFT mixes, but no expert has an sft stage with a mix"))
    return issues


def _evals_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    evals = loaded.data.get("evals")
    if evals is None:
        return []
    datasets = loaded.data.get("datasets", {})
    issues = []
    for domain, spec in evals["domains"].items():
        where = ("evals", "domains", domain)
        issues += _task_field_issues(loaded, where, spec)
        if spec.get("metric") == "lm_eval" or "dataset" not in spec:
            continue
        name, metric = spec["dataset"], spec["metric"]
        if name not in datasets:
            issues.append(loaded.issue(where + ("dataset",),
                f"unknown dataset '{name}'{did_you_mean(name, sorted(datasets))}"))
        elif metric in EVAL_FORMATS and datasets[name]["format"] not in EVAL_FORMATS[metric]:
            wanted = " or ".join(EVAL_FORMATS[metric])
            issues.append(loaded.issue(where + ("dataset",),
                f"dataset '{name}' has format {datasets[name]['format']}; metric {metric} needs {wanted}"))
    models = evals.get("models", schema.default("properties", "evals", "properties", "models"))
    if evals.get("expert_domains") == "own" and "experts" in models:
        unevaluated = [e for e in loaded.data.get("experts", {}) if e not in evals["domains"]]
        if unevaluated:
            issues.append(loaded.issue(("evals", "expert_domains"),
                f"expert_domains: own evaluates each expert on the domain of its name; no domain is named "
                f"{', '.join(repr(e) for e in unevaluated)}"))
    if "average" in evals["domains"]:
        issues.append(loaded.issue(("evals", "domains", "average"),
            "'average' is the name of the column of means; give the domain another name", at_key=True))
    return issues


def _task_field_issues(loaded: LoadedYaml, where: tuple, spec: dict) -> list[Issue]:
    """An lm_eval domain reads its task's data, not a dataset; the task's fields mean nothing to other metrics."""
    if spec.get("metric") == "lm_eval":
        return [loaded.issue(where + ("dataset",), "an lm_eval domain reads its task's own data: remove dataset",
                             at_key=True)] if "dataset" in spec else []
    return [loaded.issue(where + (f,), f"{f} goes with metric lm_eval only", at_key=True)
            for f in LM_EVAL_FIELDS if f in spec]


def _gates_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    gates = loaded.data.get("gates")
    if not gates:
        return []
    evals = loaded.data.get("evals")
    if evals is None:
        return [loaded.issue(("gates",), "gates compare evaluation results: declare `evals` too")]
    models = evals.get("models", schema.default("properties", "evals", "properties", "models"))
    issues = []
    for index, gate in enumerate(gates):
        where = ("gates", index)
        issues += _gate_model_issues(loaded, where, gate, models)
        issues += _gate_combination_issues(loaded, where, gate)
        issues += _gate_domain_issues(loaded, where, gate, set(evals["domains"]))
        if evals.get("expert_domains") == "own":
            issues += _gate_own_domain_issues(loaded, where, gate, list(evals["domains"]))
    return issues


_GATE_MODEL_KEYS = ("model", "at_least", "over")


def _gate_model_issues(loaded: LoadedYaml, where: tuple, gate: dict, models: list[str]) -> list[Issue]:
    """Every model a gate names must exist, be evaluated, and differ from the gate's other models."""
    experts = loaded.data["experts"]
    issues = []
    named: dict[str, str] = {}
    for key in _GATE_MODEL_KEYS:
        value = gate.get(key)
        if not isinstance(value, str):
            continue
        if value in named:
            issues.append(loaded.issue(where + (key,),
                f"{value} is already the gate's {named[value]}: the gate would compare a model with itself"))
        named.setdefault(value, key)
        if value == OWN_EXPERT:
            if "experts" not in models:
                issues.append(loaded.issue(where + (key,), "own_expert needs 'experts' in evals.models"))
            continue
        if value.split(".")[0] not in EVAL_MODELS:
            continue  # not a model name at all: the schema said so
        if value.startswith("experts."):
            expert = value.split(".", 1)[1]
            if expert not in experts:
                issues.append(loaded.issue(where + (key,),
                    f"unknown expert '{expert}'{did_you_mean(expert, sorted(experts))}"))
                continue
        if value.split(".")[0] not in models:
            issues.append(loaded.issue(where + (key,),
                f"{value} is not evaluated: add '{value.split('.')[0]}' to evals.models"))
    return issues


def _gate_combination_issues(loaded: LoadedYaml, where: tuple, gate: dict) -> list[Issue]:
    """Options that need each other, or that contradict each other."""
    issues = []
    numeric = not isinstance(gate.get("at_least"), str)
    if "keep" in gate and "over" not in gate:
        issues.append(loaded.issue(where + ("keep",),
            "keep needs `over`: the model the gain is measured from (e.g. over: anchor)"))
    if "over" in gate and "keep" not in gate:
        issues.append(loaded.issue(where + ("over",),
            "over needs `keep`: the share of the gain to keep (e.g. keep: 0.8)"))
    if "keep" in gate and numeric:
        issues.append(loaded.issue(where + ("at_least",),
            "keep measures at_least's gain over `over`: at_least must be a model, not a number"))
    if gate.get("intervals_apart"):
        if numeric:
            issues.append(loaded.issue(where + ("intervals_apart",),
                "intervals_apart compares two models' 95% intervals, but at_least is a number "
                "(compare with a model, or drop intervals_apart)"))
        if "keep" in gate:
            issues.append(loaded.issue(where + ("intervals_apart",),
                "intervals_apart compares two models' 95% intervals; keep's reference is a computed score "
                "without one (use tolerance: ci95, or a separate gate)"))
        if gate.get("tolerance"):
            issues.append(loaded.issue(where + ("tolerance",),
                "tolerance loosens a condition that intervals_apart tightens: give one or the other"))
    return issues


def _gate_domain_issues(loaded: LoadedYaml, where: tuple, gate: dict, domains: set[str]) -> list[Issue]:
    """A gate's domains must be evaluated; with own_expert, each must be named like an expert."""
    experts = loaded.data["experts"]
    own = next((key for key in _GATE_MODEL_KEYS if gate.get(key) == OWN_EXPERT), None)
    issues = []
    for d_index, domain in enumerate(gate.get("domains", [])):
        if domain != "average" and domain not in domains:
            issues.append(loaded.issue(where + ("domains", d_index),
                f"unknown domain '{domain}'{did_you_mean(domain, sorted(domains))}"))
        elif own and domain not in experts:
            issues.append(loaded.issue(where + ("domains", d_index),
                f"own_expert: no expert is named '{domain}'"))
    if own and "domains" not in gate and not domains & set(experts):
        issues.append(loaded.issue(where + (own,),
            "own_expert compares each domain with the expert of the same name, but no domain is named "
            "like an expert"))
    return issues


def _gate_own_domain_issues(loaded: LoadedYaml, where: tuple, gate: dict, domains: list[str]) -> list[Issue]:
    """With evals.expert_domains: own, an expert named by the gate has a score only on the domain of its name
    (own_expert always does)."""
    issues = []
    for key in _GATE_MODEL_KEYS:
        value = gate.get(key)
        if not (isinstance(value, str) and value.startswith("experts.")):
            continue
        expert = value.split(".", 1)[1]
        if "domains" not in gate:
            if domains != [expert]:
                issues.append(loaded.issue(where + (key,),
                    f"{value} is evaluated only on {expert} (evals.expert_domains: own), and the gate's domains "
                    f"default to all of them: give `domains: [{expert}]`, or use own_expert"))
            continue
        for d_index, domain in enumerate(gate["domains"]):
            if domain != expert:
                issues.append(loaded.issue(where + ("domains", d_index),
                    f"{value} is evaluated only on {expert} (evals.expert_domains: own), not on {domain}"))
    return issues


# -- construction -------------------------------------------------------------------


def _build_recipe(loaded: LoadedYaml, manifest: Path) -> Recipe:
    data = loaded.data
    seed = data.get("seed", schema.default("properties", "seed"))
    defaults = {"seed": seed, **data.get("training", {})}  # project-wide training settings
    base = data["base"]
    pretrained = base.get("pretrained")
    experts = tuple(
        Expert(
            name=name,
            ffn=spec.get("ffn", "pretrained" if pretrained else "anchor"),
            seed=spec.get("seed", seed),
            stages=tuple(_build_stage(stage, seed, defaults) for stage in spec.get("stages", [])),
        )
        for name, spec in data["experts"].items()
    )
    routing_defaults = schema.defaults("properties", "routing")
    init_samples = routing_defaults.pop("init_samples")  # only init: embedding reads it
    routing = cast(Routing, {**routing_defaults, **data.get("routing", {})})
    if routing["init"] == "embedding":
        routing.setdefault("init_samples", init_samples)
    if routing["train"] is not None:
        routing["train"] = _build_router_training(routing["train"], defaults)
    output = cast(Output, {**schema.defaults("properties", "output"), **data["output"]})
    datasets = {name: cast(DatasetSpec, {"name": name, **schema.defaults("$defs", "dataset"), **spec})
                for name, spec in data.get("datasets", {}).items()}
    return Recipe(
        manifest_path=manifest,
        root=manifest.parent,
        text=loaded.text,
        name=data.get("name", manifest.stem),
        seed=seed,
        lockfile=manifest.parent / data.get("lockfile", schema.default("properties", "lockfile")),
        anchor=base["anchor"],
        pretrained=pretrained,
        datasets=datasets,
        experts=experts,
        routing=routing,
        output=output,
        document=loaded,
        evals=_build_evals(data.get("evals")),
        gates=tuple(_build_gate(gate, data) for gate in data.get("gates", [])),
        sandbox_isolation={**schema.defaults("properties", "sandbox"), **data.get("sandbox", {})}["isolation"],
        store_remote=data.get("store", {}).get("remote"),
        baselines=tuple(data.get("baselines", schema.default("properties", "baselines"))),
    )


def _build_router_training(train: Mapping[str, Any], project_training: dict[str, Any]) -> RouterTraining:
    """Router training over the project-wide training settings, BAR's settings in between."""
    settings = schema.defaults("properties", "routing", "properties", "train")
    return cast(RouterTraining, {**settings, **train, "training": {**project_training, **settings["training"],
                                                                    **train.get("training", {})}})


def _build_stage(stage: dict, seed: int, defaults: dict[str, Any]) -> Stage:
    kind = stage["kind"]
    training = {**defaults, **stage.get("training", {})}
    mix = None if stage.get("mix") is None else cast(Mix, {"seed": seed, **stage["mix"]})
    reward_defaults = schema.defaults("$defs", "reward")
    return Stage(
        name=stage.get("name", kind),
        kind=kind,
        mix=mix,
        trainable=tuple(stage.get("trainable", schema.stage_defaults(kind)["trainable"])),
        training=training,
        rewards=tuple(cast(Reward, {**reward_defaults, **r}) for r in stage.get("rewards", [])),
        launcher=cast(Launcher, {**schema.defaults("$defs", "launcher"), **stage.get("launcher", {})}),
    )


def _build_evals(evals: dict | None) -> Evals:
    """Each domain with its generation limits resolved; {} when nothing is evaluated."""
    if not evals:
        return Evals()
    generation = {**schema.defaults("$defs", "generation"), **evals.get("generation", {})}
    domains = {
        name: _lm_eval_domain(spec, generation) if spec["metric"] == "lm_eval" else
              cast(EvalDomain, {"dataset": spec["dataset"], "metric": spec["metric"], "limit": spec.get("limit"),
                                "generation": {**generation, **spec.get("generation", {})},
                                # keys without a judge stay as they were
                                **({"judge": spec["judge"]} if "judge" in spec else {})})
        for name, spec in evals["domains"].items()
    }
    settings = {**schema.defaults("properties", "evals"), **evals}
    return Evals(models=list(settings["models"]), domains=domains, expert_domains=settings["expert_domains"],
                 routing_report=settings["routing_report"], precision=settings["precision"])


def _lm_eval_domain(spec: dict, generation: dict) -> EvalDomain:
    """An lm_eval domain: its task settings as written (absent ones keep lm-eval's defaults) and its
    generation limits, of which lm-eval takes the batch size (the task sets its own generation lengths)."""
    return cast(EvalDomain, {"metric": "lm_eval", "limit": spec.get("limit"),
                             "generation": {**generation, **spec.get("generation", {})},
                             **{f: spec[f] for f in LM_EVAL_FIELDS if f in spec}})


def _build_gate(gate: dict, data: dict) -> Gate:
    domains = gate.get("domains")
    if domains is None:
        names = list(data["evals"]["domains"])
        own = OWN_EXPERT in (gate["model"], gate["at_least"], gate.get("over"))
        domains = [d for d in names if d in data["experts"]] if own else names
    resolved = {"model": gate["model"], "at_least": gate["at_least"], "domains": domains,
                "tolerance": gate.get("tolerance", schema.default("$defs", "gate", "properties", "tolerance"))}
    # the newer conditions appear only when asked for, so that existing gates keep their node key
    if gate.get("intervals_apart"):
        resolved["intervals_apart"] = True
    if "keep" in gate:
        resolved.update(keep=gate["keep"], over=gate["over"])
    return cast(Gate, {"name": gate.get("name") or gate_description(resolved), **resolved})


def gate_description(gate: Mapping[str, Any]) -> str:
    """E.g. "merged >= anchor - 0.02 on math, code", "own_expert > anchor (95% intervals apart) on math",
    "merged keeps 80% of own_expert's gain over anchor on math"."""
    tolerance = gate["tolerance"]
    slack = f" - {tolerance:g}" if tolerance and tolerance != CI95 else ""
    within = " (within 95% intervals)" if tolerance == CI95 else ""
    at_least = gate["at_least"]
    reference = f"{at_least:g}" if isinstance(at_least, (int, float)) else at_least
    if "keep" in gate:
        condition = f"{gate['model']} keeps {gate['keep'] * 100:g}% of {reference}'s gain over {gate['over']}"
    elif gate.get("intervals_apart"):
        condition = f"{gate['model']} > {reference} (95% intervals apart)"
    else:
        condition = f"{gate['model']} >= {reference}"
    return f"{condition}{slack}{within} on {', '.join(gate['domains'])}"


# -- helpers --------------------------------------------------------------------------


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_size(text: str) -> int:
    """'500MB' -> 500_000_000 (the schema has checked the form)."""
    number = text.rstrip("BKMGi ")
    unit = text[len(number):].strip()
    return int(float(number) * _UNITS[unit])


def _dedupe(issues: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))
