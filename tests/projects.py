"""Tiny barctl projects on disk, and a way to drive the real CLI in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner, Result

from barctl.cli import main

TINY_ANCHOR = {
    "random": {
        "family": "llama",
        "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128},
        "seed": 0,
        "tokenizer": {"path": "tok"},
    }
}


def tiny_manifest(experts: dict | None = None, **top) -> dict:
    manifest = {
        "version": 1,
        "name": "tiny-test",
        "base": {"anchor": TINY_ANCHOR},
        "experts": experts if experts is not None else {"math": {}, "code": {}},
        "output": {"dir": "out/moe", "max_shard_size": "100MB"},
    }
    manifest.update(top)
    return manifest


def make_project(root: Path, tokenizer_dir: Path, manifest: dict | None = None) -> Path:
    """A project directory with a tokenizer and a manifest; returns the manifest's path."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "tok").exists():
        shutil.copytree(tokenizer_dir, root / "tok")
    path = root / "bar.yaml"
    write_manifest(path, manifest or tiny_manifest())
    return path


class _NoAliases(yaml.SafeDumper):
    """Writes a dict used twice in full both times, as a person would (no &anchors)."""

    def ignore_aliases(self, data) -> bool:
        return True


def write_manifest(path: Path, manifest: dict) -> None:
    path.write_text(yaml.dump(manifest, Dumper=_NoAliases, sort_keys=False))


def barctl(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def plan_json(manifest: Path, *extra: str) -> dict[str, dict]:
    """The plan's actions by node id."""
    result = barctl("plan", manifest, "--json", *extra)
    assert result.exit_code == 0, result.output
    return {a["node_id"]: a for a in json.loads(result.output)["actions"]}


def apply(manifest: Path, *extra: str) -> Result:
    result = barctl("apply", manifest, "--auto-approve", *extra)
    assert result.exit_code == 0, result.output
    return result


def changed(actions: dict[str, dict]) -> dict[str, str]:
    return {node_id: a["action"] for node_id, a in actions.items() if a["action"] != "keep"}
