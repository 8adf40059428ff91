"""Values the schema lets through but no run can use, refused when the manifest is loaded.

Each would otherwise fail deep inside a library after earlier nodes ran (or, for a name
ending in a line break, slip past the schema's patterns, which Python's `re` matches
before a final newline). Nothing here imports torch or transformers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from barctl.errors import Issue
from barctl.manifest.yamlload import LoadedYaml, YamlPath

INT64 = 2**63
SEED_LIMIT = 2**32  # numpy's, through transformers' set_seed
GRPO_GENERATIONS = 4  # barctl's default num_generations (barctl/stages/grpo.py)
TRAINER_BATCH = 8  # TrainingArguments' per_device_train_batch_size
RANDOM_SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings")


def value_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    issues = []
    for path, key, value in _walk(loaded.data, ()):
        if path[-1:] == (key,) and any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
            issues.append(loaded.issue(path, f"the name {key!r} holds a line break or control character",
                                       at_key=True))
        if isinstance(value, float) and not math.isfinite(value):
            issues.append(loaded.issue(path, f"{value} is not a usable number"))
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -INT64 <= value < INT64:
                issues.append(loaded.issue(path, f"{value} does not fit in a 64-bit integer"))
            elif key == "seed" and not 0 <= value < SEED_LIMIT:
                issues.append(loaded.issue(path, f"a seed must be below 2**32 (numpy's limit), got {value}"))
        elif isinstance(value, str) and key == "name" and any(ord(ch) < 32 for ch in value):
            issues.append(loaded.issue(path, f"the name {value!r} holds a line break or control character"))
    return issues


def run_issues(loaded: LoadedYaml, root: Path) -> list[Issue]:
    """A random anchor's shape, GRPO's batch, launcher files and the shard size."""
    data = loaded.data
    issues = _random_anchor_issues(loaded, data["base"]["anchor"])
    for name, expert in data["experts"].items():
        for index, stage in enumerate(expert.get("stages") or []):
            where = ("experts", name, "stages", index)
            issues += _launcher_issues(loaded, root, where, stage.get("launcher") or {})
            if stage.get("kind") == "grpo":
                issues += _grpo_issues(loaded, where, stage, data.get("training") or {})
    if _is_zero_size(data["output"].get("max_shard_size")):
        issues.append(loaded.issue(("output", "max_shard_size"), "a shard size of 0 holds no tensor"))
    return issues


def _is_zero_size(text: Any) -> bool:
    try:
        return isinstance(text, str) and float(text.rstrip("BKMGi ")) == 0
    except ValueError:
        return False  # not a size: the schema says so


def _random_anchor_issues(loaded: LoadedYaml, anchor: dict[str, Any]) -> list[Issue]:
    config = (anchor.get("random") or {}).get("config") or {}
    where = ("base", "anchor", "random", "config")
    issues = [loaded.issue(where + (field,), f"expected a positive integer, got {config[field]!r}")
              for field in RANDOM_SHAPE if field in config
              and (not isinstance(config[field], int) or isinstance(config[field], bool) or config[field] < 1)]
    if issues:
        return issues
    hidden, heads, kv_heads = (config.get(f) for f in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    if hidden and heads and "head_dim" not in config and hidden % heads:
        issues.append(loaded.issue(where + ("num_attention_heads",),
                                   f"{heads} attention heads do not divide hidden_size {hidden}"))
    if heads and kv_heads and heads % kv_heads:
        issues.append(loaded.issue(where + ("num_key_value_heads",),
                                   f"{kv_heads} key/value heads do not divide the {heads} attention heads"))
    return issues


def _launcher_issues(loaded: LoadedYaml, root: Path, where: YamlPath, launcher: dict[str, Any]) -> list[Issue]:
    config_file = launcher.get("config_file")
    if isinstance(config_file, str) and not (root / config_file).is_file():
        return [loaded.issue(where + ("launcher", "config_file"), f"no such file: {config_file}")]
    return []


def _grpo_issues(loaded: LoadedYaml, where: YamlPath, stage: dict[str, Any], defaults: dict[str, Any]) -> list[Issue]:
    """TRL's GRPOConfig rule: the generation batch holds whole groups of `num_generations` completions."""
    training = {**defaults, **(stage.get("training") or {})}
    trl = training.get("trl") or {}
    generations = trl.get("num_generations", GRPO_GENERATIONS)
    at = where + (("training", "trl", "num_generations") if "num_generations" in trl else ("training",))
    if not isinstance(generations, int) or generations < 2:
        return [loaded.issue(at, f"GRPO needs at least 2 generations per prompt, got {generations!r}")]
    launcher = stage.get("launcher") or {}
    processes = launcher.get("num_processes", 1) * launcher.get("num_machines", 1) \
        if launcher.get("kind") == "accelerate" else 1
    batch = training.get("batch_size", TRAINER_BATCH)
    steps = trl.get("steps_per_generation", training.get("gradient_accumulation", 1))
    generation_batch = trl.get("generation_batch_size", batch * processes * steps)
    if isinstance(generation_batch, int) and generation_batch % generations:
        return [loaded.issue(at, f"GRPO's generation batch ({generation_batch}: batch_size {batch} x {processes} "
                                 f"processes x {steps} steps) must be divisible by num_generations ({generations})")]
    return []


def _walk(value: Any, path: YamlPath, key: str = "") -> Iterator[tuple[YamlPath, str, Any]]:
    """(path, the key it ends in, value) for every value of the document."""
    yield path, key, value
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _walk(item, path + (name,), name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, path + (index,), key)
