"""The fields of TRL's config classes, read from the installed sources without importing them.

`plan` must not import torch (TRL does), yet it should reject an unknown `training.trl`
field before anything trains. The config classes are plain dataclasses, so their fields
are the annotated names of each class body along the base-class chain
(SFTConfig -> _BaseConfig -> transformers.TrainingArguments).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from functools import cache
from pathlib import Path

CONFIG_CLASSES = {
    "midtrain": ("trl", "trainer/sft_config.py", "SFTConfig"),
    "sft": ("trl", "trainer/sft_config.py", "SFTConfig"),
    "dpo": ("trl", "trainer/dpo_config.py", "DPOConfig"),
    "grpo": ("trl", "trainer/grpo_config.py", "GRPOConfig"),
}


def config_class_name(kind: str) -> str:
    return CONFIG_CLASSES[kind][2]


@cache
def config_fields(kind: str) -> frozenset[str] | None:
    """Every field of the stage kind's TRL config class; None when the sources cannot be read."""
    package, relative, name = CONFIG_CLASSES[kind]
    root = _package_dir(package)
    if root is None:
        return None
    fields: set[str] = set()
    return frozenset(fields) if _collect(root / relative, name, fields, depth=0) else None


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # a top-level find_spec imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _collect(path: Path, class_name: str, fields: set[str], depth: int) -> bool:
    if depth > 8 or not path.is_file():
        return False
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if found is None:
        # A lazy package __init__ (transformers) names the class without defining it.
        defining = _defining_module(path.parent, class_name) if path.name == "__init__.py" else None
        return defining is not None and _collect(defining, class_name, fields, depth + 1)
    fields.update(
        statement.target.id
        for statement in found.body
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
    )
    for base in found.bases:
        if isinstance(base, ast.Name):
            origin = _import_origin(tree, path, base.id)
            if origin is not None and not _collect(origin, base.id, fields, depth + 1):
                return False
    return True


def _import_origin(tree: ast.Module, path: Path, name: str) -> Path | None:
    """The source file a module-level `from X import name` brings `name` from."""
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and any(a.name == name for a in statement.names):
            if statement.level:
                base = path.parent
                for _ in range(statement.level - 1):
                    base = base.parent
            else:
                top, _, rest = (statement.module or "").partition(".")
                package = _package_dir(top)
                if package is None:
                    return None
                base, statement_module = package, rest
                return _module_file(base, statement_module)
            return _module_file(base, statement.module or "")
    return None


def _defining_module(package_dir: Path, class_name: str) -> Path | None:
    marker = re.compile(rf"^class {re.escape(class_name)}\b", re.MULTILINE)
    return next((p for p in sorted(package_dir.glob("*.py")) if marker.search(p.read_text(encoding="utf-8"))),
                None)


def _module_file(base: Path, dotted: str) -> Path | None:
    target = base.joinpath(*dotted.split(".")) if dotted else base
    for candidate in (target.with_suffix(".py"), target / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# barctl's own training settings and the TRL fields they set; `trl:` may not set these.
BARCTL_TO_TRL = {
    "learning_rate": "learning_rate",
    "lr_scheduler": "lr_scheduler_type",
    "warmup_ratio": "warmup_ratio",
    "warmup_steps": "warmup_steps",
    "epochs": "num_train_epochs",
    "max_steps": "max_steps",
    "batch_size": "per_device_train_batch_size",
    "gradient_accumulation": "gradient_accumulation_steps",
    "max_length": "max_length",
    "weight_decay": "weight_decay",
    "seed": "seed",
    "save_steps": "save_steps",
    "precision": "bf16",
    "report_to": "report_to",
    "use_vllm": "use_vllm",
}


# Fields barctl sets itself, whatever `trl:` says: for every kind, and per kind.
BARCTL_SETS = ("output_dir", "use_cpu", "resume_from_checkpoint")
KIND_SETS = {"grpo": ("reward_weights",)}


def passthrough_problems(kind: str, fields: dict) -> dict[str, str]:
    """Problems of a stage's `training.trl` fields, by field name: the rules apply enforces, checked at plan."""
    if not fields:
        return {}
    known = config_fields(kind)
    owned = {trl_name: ours for ours, trl_name in BARCTL_TO_TRL.items()} | {"fp16": "precision"}
    problems = {}
    for name in fields:
        if name in owned:
            problems[name] = f"set it as training.{owned[name]}, which barctl maps to {name}"
        elif name in BARCTL_SETS or name in KIND_SETS.get(kind, ()):
            problems[name] = "barctl sets it itself" + (
                " (from the stage's rewards and their weights)" if name == "reward_weights" else "")
        elif known is not None and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems[name] = f"unknown field '{name}' of {config_class_name(kind)}{hint}"
    return problems
