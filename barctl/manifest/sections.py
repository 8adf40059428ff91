"""The typed sections of a Recipe: the manifest's mappings with every default filled in.

They stay plain dicts at run time (node configs and keys are their canonical JSON); the types
tell readers and mypy which keys each section holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from typing_extensions import NotRequired


class ModelSource(TypedDict, total=False):
    """Exactly one of path, hub, package or random (the manifest's rules check that)."""

    path: str
    hub: str
    revision: str
    gguf_file: str
    package: str
    file: str
    random: dict[str, Any]  # a config's shape fields, `seed` and a `tokenizer` source


class DatasetSpec(TypedDict):
    name: str
    split: str
    format: str
    streaming: bool | str  # true, false or "auto" (barctl.data.streaming)
    shuffle_buffer: int
    path: NotRequired[str]
    hub: NotRequired[str]
    revision: NotRequired[str]
    subset: NotRequired[str]
    columns: NotRequired[dict[str, str]]


class MixSource(TypedDict):
    dataset: str
    weight: NotRequired[float]
    fraction: NotRequired[float]
    count: NotRequired[int]


class Mix(TypedDict):
    sources: list[MixSource]
    seed: int
    size: NotRequired[int]


class Judge(TypedDict, total=False):
    path: str
    kind: str
    refusal_labels: list[str]
    refusal_pattern: str
    template: str
    max_new_tokens: int
    batch_size: int


class Reward(TypedDict):
    name: str
    weight: float
    judge: NotRequired[Judge]


class Launcher(TypedDict):
    kind: str
    config_file: NotRequired[str]
    num_processes: NotRequired[int]
    num_machines: NotRequired[int]
    main_process_ip: NotRequired[str]
    main_process_port: NotRequired[int]


class RouterTraining(TypedDict):
    fraction: float
    aux_loss_weight: float
    z_loss_weight: float
    training: dict[str, Any]  # barctl's training settings; `trl` passes SFTConfig fields through


class Routing(TypedDict):
    top_k: int | str  # a number of experts, or "all"
    shared: str
    init: str
    train: RouterTraining | None
    init_samples: NotRequired[int]
    prompts: NotRequired[dict[str, list[str]]]


class Output(TypedDict):
    dir: str
    architecture: str
    dtype: str
    max_shard_size: str
    smoke_test: bool


class Generation(TypedDict):
    max_new_tokens: int
    batch_size: int
    max_length: int


class EvalDomain(TypedDict):
    """A domain scored by a metric on a dataset, or (metric lm_eval) an lm-evaluation-harness task."""

    metric: str
    limit: int | None
    generation: Generation
    dataset: NotRequired[str]
    judge: NotRequired[Judge]
    task: NotRequired[str]
    include_path: NotRequired[str]
    num_fewshot: NotRequired[int]
    task_metric: NotRequired[str]
    apply_chat_template: NotRequired[bool]
    unsafe_code: NotRequired[bool]


class Evals(TypedDict, total=False):
    """Empty when the manifest evaluates nothing."""

    models: list[str]
    domains: dict[str, EvalDomain]
    expert_domains: str
    routing_report: bool
    precision: str  # "fp32" or "bf16"


class Gate(TypedDict):
    name: str
    model: str
    at_least: float | str  # a number or a model
    domains: list[str]
    tolerance: float | str  # a number or "ci95"
    intervals_apart: NotRequired[bool]
    keep: NotRequired[float]
    over: NotRequired[str]
