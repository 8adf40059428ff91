"""The tokenised-data cache: a rebuilt stage draws and tokenises nothing and trains the same weights;
the key follows the tokenizer and the preparation settings; a damaged entry is never used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from barctl.model.checkpoint import CheckpointReader
from barctl.training.tokenized import TokenizedCache, cache_key
from tests.projects import apply, make_project, tiny_manifest

CHATS = [[{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}"}]
         for a in range(4) for b in range(4)]
STAGES = ("experts.math.midtrain", "experts.math.sft")


def project(root: Path, tokenizer_dir: Path) -> Path:
    root.mkdir(parents=True)
    (root / "chat.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    (root / "text.jsonl").write_text("".join(json.dumps({"text": f"{i} plus {i} is {2 * i}. " * 3}) + "\n"
                                             for i in range(16)))
    training = {"learning_rate": 1e-2, "batch_size": 4, "max_length": 32, "epochs": 1, "lr_scheduler": "constant"}
    stages = [{"kind": "midtrain", "mix": {"sources": [{"dataset": "text", "count": 16}]}, "training": training},
              {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 16}]}, "training": training}]
    datasets = {"chat": {"path": "chat.jsonl", "format": "messages"}, "text": {"path": "text.jsonl", "format": "text"}}
    return make_project(root, tokenizer_dir, tiny_manifest({"math": {"stages": stages}}, datasets=datasets))


def weights(manifest: Path, node_id: str) -> dict[str, torch.Tensor]:
    import yaml

    entry = yaml.safe_load((manifest.parent / "barctl.lock").read_text())["nodes"][node_id]
    with CheckpointReader(manifest.parent / entry["artifact"]["path"]) as reader:
        return {name: reader.get(name) for name in reader.names()}


def test_a_rebuilt_stage_tokenises_nothing_and_trains_the_same_weights(tmp_path, tokenizer_dir, monkeypatch):
    from trl import SFTTrainer

    from barctl.training import common

    manifest = project(tmp_path / "p", tokenizer_dir)
    apply(manifest, "--target", STAGES[-1])
    entries = sorted(p.name for p in (manifest.parent / ".barctl" / "cache" / "tokenized").iterdir())
    assert len(entries) == 2  # one per stage
    first = {node: weights(manifest, node) for node in STAGES}

    calls: list[str] = []
    prepare, draw = SFTTrainer._prepare_dataset, common.stage_dataset
    monkeypatch.setattr(SFTTrainer, "_prepare_dataset", lambda *a, **k: calls.append("prepare") or prepare(*a, **k))
    monkeypatch.setattr(common, "stage_dataset", lambda *a, **k: calls.append("draw") or draw(*a, **k))
    result = apply(manifest, "--target", STAGES[-1], *(f"--replace={node}" for node in STAGES))
    assert calls == []
    assert result.output.count("the tokenised data comes from the cache") == 2
    assert sorted(p.name for p in (manifest.parent / ".barctl" / "cache" / "tokenized").iterdir()) == entries
    for node in STAGES:
        again = weights(manifest, node)
        assert again.keys() == first[node].keys()
        assert all(torch.equal(again[name], first[node][name]) for name in again), node


def key(tokenizer: Path, **training) -> str:
    config = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 4}]},
              "training": {"max_length": 64, "seed": 0, **training}}
    return cache_key(config, {"chat": {"kind": "files", "digest": "sha256:0"}}, tokenizer)


def test_the_key_follows_the_tokenizer_and_the_preparation_settings(tmp_path, tokenizer_dir):
    tokenizer = shutil.copytree(tokenizer_dir, tmp_path / "tok")
    (tokenizer / "model.safetensors").write_bytes(b"weights")
    base = key(tokenizer)
    assert key(tokenizer, learning_rate=1e-3) == base  # training settings preparation does not read
    (tokenizer / "model.safetensors").write_bytes(b"other weights")
    assert key(tokenizer) == base  # a checkpoint's weights are not its tokenizer
    assert key(tokenizer, max_length=32) != base
    assert key(tokenizer, trl={"packing": True}) != base
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    assert key(tokenizer) != base


@pytest.mark.parametrize("damage", ["flip a byte", "lose a file", "lose the digests"])
def test_a_damaged_entry_is_ignored_and_written_again(tmp_path, damage):
    cache = TokenizedCache(tmp_path / "tokenized", "k" * 64)
    rows = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[1, 2, 3], [-100, 5]]})
    cache.save(rows)
    assert cache.load().to_list() == rows.to_list()
    arrow = next(cache.path.glob("*.arrow"))
    if damage == "flip a byte":
        data = bytearray(arrow.read_bytes())
        data[-10] ^= 0xFF
        arrow.write_bytes(bytes(data))
    elif damage == "lose a file":
        arrow.unlink()
    else:
        (cache.path / "barctl-digests.json").unlink()
    assert cache.load() is None
    cache.save(rows)
    assert cache.load().to_list() == rows.to_list()
    assert [p.name for p in cache.root.iterdir()] == [cache.path.name]  # no temporary directory left


def test_a_half_written_entry_is_never_seen(tmp_path):
    cache = TokenizedCache(tmp_path / "tokenized", "k" * 64)
    staged = cache.root / f".tmp-{cache.path.name[:16]}-0000"
    Dataset.from_dict({"input_ids": [[1]]}).save_to_disk(str(staged))  # a save killed before its rename
    assert cache.load() is None
