"""Recipe -> graph of nodes with content keys.

A node's key digests its kind, the kind's version, its resolved config, the keys of its
inputs and the fingerprints of the data it reads. Keys chain through inputs (like Nix),
so the whole plan is known before anything runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from barctl.data.streaming import stream_keys
from barctl.engine.baselines import ALL_TRAINABLE, RetrainStage, btx_stage_id, retrain_stages
from barctl.manifest.recipe import Recipe, Stage
from barctl.manifest.sections import EvalDomain, Generation

# Bump a kind's version whenever its runner's output changes for the same config:
# every node of that kind then rebuilds, with the reason named in the plan.
KIND_VERSIONS = {
    "base": 1,
    "branch": 1,
    "midtrain": 3,
    "sft": 3,
    "dpo": 3,
    "grpo": 3,
    "merge": 1,
    "btx_merge": 1,
    "router": 1,
    "eval": 2,
    "gates": 1,
    "export": 2,
}


@dataclass(frozen=True)
class Node:
    id: str
    kind: str
    config: dict[str, Any]
    inputs: tuple[str, ...]
    data: dict[str, Any]
    key: str

    @property
    def kind_version(self) -> int:
        return KIND_VERSIONS[self.kind]


class Graph:
    """Nodes in topological order (every node after its inputs)."""

    def __init__(self, nodes: list[Node]):
        self._nodes = {node.id: node for node in nodes}

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __getitem__(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def ids(self) -> list[str]:
        return list(self._nodes)

    def ancestors(self, node_id: str) -> set[str]:
        """The node and everything it depends on."""
        seen: set[str] = set()
        stack = [node_id]
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self._nodes[current].inputs)
        return seen


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def node_key(kind: str, config: dict, input_keys: dict[str, str], data: dict) -> str:
    payload = {
        "kind": kind,
        "kind_version": KIND_VERSIONS[kind],
        "config": _keyed(config),
        "inputs": input_keys,
        "data": data,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# Where training metrics are sent (a stage's, router training's) does not change what is computed, nor does
# the MoE kernel: transformers' experts implementations compute the same sums, in another order.
_UNKEYED = tuple((*parents, field) for field in ("report_to", "experts_implementation")
                 for parents in (("training",), ("train", "training")))


def _keyed(config: dict) -> dict:
    """`config` without the fields in _UNKEYED."""
    keyed = copy.deepcopy(config)
    for *parents, field in _UNKEYED:
        inner: Any = keyed
        for parent in parents:
            inner = inner.get(parent) if isinstance(inner, dict) else None
        if isinstance(inner, dict):
            inner.pop(field, None)
    return keyed


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.keys: dict[str, str] = {}

    def add(self, node_id: str, kind: str, config: dict, inputs: list[str], data: dict | None = None) -> str:
        data = data or {}
        input_keys = {i: self.keys[i] for i in inputs}
        key = node_key(kind, config, input_keys, data)
        self.nodes.append(Node(node_id, kind, config, tuple(inputs), data, key))
        self.keys[node_id] = key
        return node_id


def build_graph(recipe: Recipe, fingerprints: Fingerprints) -> Graph:
    """Every node the recipe implies, keyed. `fingerprints` digests models and data."""
    b = _Builder()
    base_data = {"anchor": fingerprints.model(recipe.anchor)}
    if recipe.pretrained is not None:
        base_data["pretrained"] = fingerprints.model(recipe.pretrained)
    base = b.add("base", "base", {"anchor": recipe.anchor, "pretrained": recipe.pretrained}, [], base_data)

    expert_heads = []
    for expert in recipe.experts:
        prefix = f"experts.{expert.name}"
        head = b.add(
            f"{prefix}.branch", "branch",
            {"expert": expert.name, "ffn": expert.ffn, "seed": expert.seed,
             "architecture": recipe.output["architecture"]},
            [base],
        )
        for stage in expert.stages:
            head = b.add(
                f"{prefix}.{stage.name}", stage.kind, stage_config(stage), [head],
                _data(recipe, fingerprints, stage_datasets(stage), stage_mixes(stage)),
            )
        expert_heads.append(head)

    merge = b.add(
        "merge", "merge",
        {"experts": [e.name for e in recipe.experts], "shared": recipe.routing["shared"],
         "top_k": resolved_top_k(recipe), "architecture": recipe.output["architecture"]},
        [base, *expert_heads],
    )
    router = b.add("router", "router", router_config(recipe), _router_inputs(recipe, merge, base))
    baselines = _add_baselines(b, recipe, fingerprints, base)
    heads = dict(zip((e.name for e in recipe.experts), expert_heads))
    evaluations = _add_evals(b, recipe, fingerprints, base, heads, merge, router, baselines)
    if recipe.gates:
        evaluations = [b.add("gates", "gates", {"gates": [dict(g) for g in recipe.gates]}, evaluations)]
    output = recipe.output
    b.add(
        "export", "export",
        {"dir": output["dir"], "dtype": output["dtype"], "max_shard_size": output["max_shard_size"],
         "smoke_test": output["smoke_test"]},
        [merge, router, *evaluations],
    )
    return Graph(b.nodes)


def _router_inputs(recipe: Recipe, merge: str, base: str) -> list[str]:
    """The merged model first; the anchor too when the router's init reads its hidden states."""
    return [merge, base] if recipe.routing["init"] in ("embedding", "prompts") else [merge]


def _add_baselines(b: _Builder, recipe: Recipe, fingerprints: Fingerprints, base: str) -> dict[str, list[str]]:
    """The nodes of the declared baselines (barctl.engine.baselines); baseline -> the inputs of its evaluation."""
    evaluated = {}
    if "btx" in recipe.baselines:
        heads = []
        for expert in recipe.experts:
            head = base
            for stage in expert.stages:
                head = b.add(btx_stage_id(expert.name, stage.name), stage.kind,
                             {**stage_config(stage), "trainable": list(ALL_TRAINABLE), "dense": True}, [head],
                             _data(recipe, fingerprints, stage_datasets(stage), stage_mixes(stage)))
            heads.append(head)
        merge = b.add("btx.merge", "btx_merge",
                      {"experts": [e.name for e in recipe.experts], "top_k": resolved_top_k(recipe),
                       "architecture": recipe.output["architecture"], "seed": recipe.seed},
                      [base, *heads])
        evaluated["btx"] = [merge, b.add("btx.router", "router", router_config(recipe),
                                         _router_inputs(recipe, merge, base))]
    if "retrain" in recipe.baselines:
        head = base
        for retrain in retrain_stages(recipe):
            config = retrain_config(retrain)
            names = sorted({s["dataset"] for mix in config["mixes"].values() for s in mix["sources"]})
            head = b.add(retrain.node_id, retrain.kind, config, [head],
                         _data(recipe, fingerprints, names, list(config["mixes"].values())))
        evaluated["retrain"] = [head]
    return evaluated


def retrain_config(stage: RetrainStage) -> dict[str, Any]:
    """What a retrain stage computes: every expert's mix of its kind (by `<expert>.<stage>`), concatenated."""
    return {"kind": stage.kind, "mixes": {f"{e}.{s.name}": s.mix for e, s in stage.parts if s.mix is not None},
            "trainable": list(ALL_TRAINABLE), "training": stage.training(), "rewards": stage.rewards(), "dense": True}


def _data(recipe: Recipe, fingerprints: Fingerprints, names: list[str],
          mixes: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The fingerprints of a stage's datasets; a streamed one's with how it was streamed (barctl.data.streaming)."""
    streamed = stream_keys(recipe.datasets, mixes)
    found = {name: fingerprints.dataset(recipe.datasets[name]) for name in names}
    return {name: {**fingerprint, "stream": streamed[name]} if name in streamed else fingerprint
            for name, fingerprint in found.items()}


def router_config(recipe: Recipe) -> dict[str, Any]:
    """The router's init and training; init fields appear only with the init that reads them."""
    routing = recipe.routing
    train: Mapping[str, Any] | None = routing["train"]
    if train is not None and not train["z_loss_weight"]:
        # keys of routers trained before the z-loss existed stay the same
        train = {k: v for k, v in train.items() if k != "z_loss_weight"}
    config: dict[str, Any] = {"init": routing["init"], "train": train, "seed": recipe.seed}
    for field in ("init_samples", "prompts"):
        if field in routing:
            config[field] = routing[field]
    return config


def _add_evals(b: _Builder, recipe: Recipe, fingerprints: Fingerprints, base: str,
               expert_heads: dict[str, str], merge: str, router: str, baselines: dict[str, list[str]]) -> list[str]:
    """One eval node per evaluated model (the anchor, each expert's last stage, the merged model); the gates'
    inputs. The baselines' evaluations are left out of those: gates judge BAR's models."""
    if not recipe.evals:
        return []
    domains = {name: _evaluated_settings(spec) for name, spec in recipe.evals["domains"].items()}

    def data(evaluated: dict[str, Any]) -> dict[str, Any]:
        found = {name: fingerprints.dataset(recipe.datasets[name])
                 for name in sorted({d["dataset"] for d in evaluated.values() if "dataset" in d})}
        return found | {f"lm_eval.{name}": fingerprints.lm_eval_task(d)
                        for name, d in sorted(evaluated.items()) if d["metric"] == "lm_eval"}

    nodes = []
    for node_id, model in evaluated_models(recipe) + baseline_evaluations(recipe):
        config: dict[str, Any] = {"model": model, "domains": domains}
        if recipe.evals["precision"] != "fp32":  # fp32 evaluations keep the keys they had before the setting
            config["precision"] = recipe.evals["precision"]
        if model in baselines:
            b.add(node_id, "eval", config, baselines[model], data(config["domains"]))
            continue
        if model == "anchor":
            inputs = [base]
        elif model == "merged":
            inputs = [merge, router]
            config["routing_report"] = recipe.evals["routing_report"]
        else:
            expert = model.removeprefix("experts.")
            inputs = [expert_heads[expert]]
            if recipe.evals["expert_domains"] == "own":
                config["domains"] = {expert: domains[expert]}
        nodes.append(b.add(node_id, "eval", config, inputs, data(config["domains"])))
    return nodes


def _evaluated_settings(domain: EvalDomain) -> EvalDomain:
    """A domain as its evaluation uses it: a `loss` domain generates nothing, so its key leaves out the
    generation length."""
    if domain["metric"] != "loss":
        return domain
    generation = cast(Generation, {k: v for k, v in domain["generation"].items() if k != "max_new_tokens"})
    return {**domain, "generation": generation}


def evaluated_models(recipe: Recipe) -> list[tuple[str, str]]:
    """(node id, model) for every model the recipe evaluates, in the order of BAR's table."""
    models = recipe.evals["models"] if recipe.evals else []
    pairs = [("eval.anchor", "anchor")] if "anchor" in models else []
    if "experts" in models:
        pairs += [(f"eval.experts.{e.name}", f"experts.{e.name}") for e in recipe.experts]
    if "merged" in models:
        pairs.append(("eval.merged", "merged"))
    return pairs


def baseline_evaluations(recipe: Recipe) -> list[tuple[str, str]]:
    """(node id, baseline) for every evaluated baseline: extra rows of the table, which gates do not judge."""
    return [(f"eval.{name}", name) for name in recipe.baselines] if recipe.evals else []


def eval_node_ids(recipe: Recipe) -> list[str]:
    """The evaluation nodes (and the gates) of a recipe: `barctl eval`'s targets."""
    return [node_id for node_id, _ in evaluated_models(recipe) + baseline_evaluations(recipe)] \
        + (["gates"] if recipe.gates else [])


def stage_config(stage: Stage) -> dict[str, Any]:
    """What a stage computes. The launcher says only where it runs, so it is not part of the key."""
    return {
        "kind": stage.kind,
        "mix": stage.mix,
        "trainable": list(stage.trainable),
        "training": stage.training,
        "rewards": list(stage.rewards),
    }


def stage_mixes(stage: Stage) -> list[Mapping[str, Any]]:
    return [] if stage.mix is None else [stage.mix]


def stage_datasets(stage: Stage) -> list[str]:
    if stage.mix is None:
        return []
    return sorted({source["dataset"] for source in stage.mix["sources"]})


def resolved_top_k(recipe: Recipe) -> int:
    top_k = recipe.routing["top_k"]
    return len(recipe.experts) + 1 if top_k == "all" else int(top_k)


class Fingerprints(Protocol):
    """What the graph needs to know about inputs outside barctl: models and data."""

    def model(self, source: Mapping[str, Any]) -> Any: ...

    def dataset(self, spec: Mapping[str, Any]) -> Any: ...

    def lm_eval_task(self, domain: Mapping[str, Any]) -> Any: ...
