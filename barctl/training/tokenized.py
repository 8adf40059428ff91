"""A stage's tokenised training data, stored once under `.barctl/cache/tokenized/<key>` and reused.

TRL prepares a stage's dataset (chat template, tokenisation, label masks, truncation or packing) when its
trainer is built. The first build stores what it prepared (`trainer.train_dataset`); later builds of a
stage with the same key load it and hand it to TRL with `dataset_kwargs={"skip_prepare_dataset": True}`,
so nothing is drawn or tokenised again (changing a stage's learning rate or steps reuses it). The key is
what preparation reads: the stage kind, its mix(es) and their data fingerprints (the node's `data`), the
tokenizer's files, `training.max_length` and `training.seed` (TRL shuffles with it), the `trl:`
pass-through and the TRL version.

An entry is written to a temporary directory and renamed into place, with the digest of each of its files;
an entry whose files are missing or do not match is ignored and written again, never used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import trl

from barctl.data.fingerprint import content_digest
from barctl.engine.graph import canonical_json

VERSION = 1
KINDS = ("sft", "midtrain")  # the kinds whose trainers take a prepared dataset (SFTTrainer)
DIGESTS = "barctl-digests.json"
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt",
                   "chat_template*", "*.model", "*.tiktoken")


def cache_key(config: Mapping[str, Any], data: Mapping[str, Any], tokenizer_dir: Path) -> str:
    """The key of a stage's prepared dataset (see the module's docstring); `data` is the node's fingerprints."""
    training = config["training"]
    payload = {
        "version": VERSION,
        "trl": trl.__version__,
        "kind": config["kind"],
        "mixes": config["mixes"] if "mixes" in config else config["mix"],
        "data": data,
        "tokenizer": tokenizer_digest(tokenizer_dir),
        "max_length": training.get("max_length"),
        "seed": training.get("seed"),
        "trl_settings": training.get("trl") or {},
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def skip_preparation(args: Any) -> None:
    """Make a TRL config's trainer take its dataset as prepared (TRL's `skip_prepare_dataset`)."""
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}


def tokenizer_digest(directory: Path) -> str:
    """A digest of the tokenizer's files in a checkpoint directory (not its weights or model config)."""
    files = sorted({p for pattern in TOKENIZER_FILES for p in directory.glob(pattern) if p.is_file()})
    outer = hashlib.sha256()
    for path in files:
        outer.update(f"{path.name}\0{content_digest(path)}\n".encode())
    return outer.hexdigest()


class TokenizedCache:
    def __init__(self, root: Path, key: str):
        self.root = root  # the store's `cache/tokenized` directory
        self.path = root / key

    def load(self) -> datasets.Dataset | None:
        """The stored dataset; None when there is none, or when its files are not the ones written."""
        try:
            expected = json.loads((self.path / DIGESTS).read_text())
            found = {p.name: content_digest(p) for p in self.path.iterdir() if p.name != DIGESTS}
            if found != expected:
                return None
            return datasets.load_from_disk(str(self.path))
        except (OSError, ValueError):  # missing or damaged: as if there were none
            return None

    def save(self, dataset: datasets.Dataset) -> None:
        """Store `dataset`, replacing a damaged entry; readers never see a half-written one."""
        self.root.mkdir(parents=True, exist_ok=True)
        staged = self.root / f".tmp-{self.path.name[:16]}-{uuid.uuid4().hex[:8]}"
        try:
            dataset.save_to_disk(str(staged))
            digests = {p.name: content_digest(p) for p in staged.iterdir()}
            (staged / DIGESTS).write_text(json.dumps(digests, sort_keys=True))
            if self.path.exists():
                trash = self.root / f".trash-{uuid.uuid4().hex[:8]}"
                self.path.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            staged.rename(self.path)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
