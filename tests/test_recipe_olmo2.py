"""recipes/olmo2-7b-bar.yaml, BAR at the paper's scale, validates and plans without the network.

`plan` reads the config.json of the anchor and of the pretrained model, and nothing else:
hub datasets are fingerprinted by id and revision, never fetched. A hub cache laid out as
huggingface_hub writes it (models--<org>--<name>/refs/main, snapshots/<commit>/config.json),
holding OLMo 2 7B's published config, lets `barctl plan` run with HF_HUB_OFFLINE=1.
barctl runs in a subprocess, as users run it: huggingface_hub reads HF_HOME and
HF_HUB_OFFLINE when it is imported, so they cannot be changed in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from barctl.data.fingerprint import FingerprintCache, fingerprint
from barctl.manifest.recipe import load_recipe
from barctl.training.launch import accelerate_command, stage_launcher
from tests.projects import barctl

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
RECIPE = RECIPES / "olmo2-7b-bar.yaml"
ACCELERATE_CONFIG = "deepspeed/accelerate-zero2.json"

# allenai/OLMo-2-1124-7B's config.json as published; the Instruct model has the same shape.
OLMO2_7B_CONFIG = {
    "architectures": ["Olmo2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "eos_token_id": 100257,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_type": "olmo2",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pad_token_id": 100277,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 500000,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.47.0.dev0",
    "use_cache": True,
    "vocab_size": 100352,
}
ANCHOR_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # what refs/main points at in the fake cache

STAGES = {"math": ["midtrain", "sft", "grpo"], "code": ["midtrain", "sft", "grpo"], "tools": ["sft"],
          "safety": ["sft"]}
# BAR's trainable groups by stage kind (the paper's schedule, written out here independently of barctl).
BAR_GROUPS = {"midtrain": {"expert", "router"}, "sft": {"expert", "router", "embeddings", "lm_head"},
              "grpo": {"expert", "router", "embeddings", "lm_head", "attention", "norms"}}


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(RECIPE)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, recipe) -> Path:
    """A hub cache with the two models' config.json: the anchor through refs/main, the pretrained model
    at the commit the recipe pins."""
    home = tmp_path_factory.mktemp("hf")
    for source in (recipe.anchor, recipe.pretrained):
        repo = home / "hub" / ("models--" + source["hub"].replace("/", "--"))
        commit = source.get("revision", ANCHOR_COMMIT)
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text(json.dumps(OLMO2_7B_CONFIG))
        if "revision" not in source:
            (repo / "refs").mkdir()
            (repo / "refs" / "main").write_text(commit)
    return home


@pytest.fixture(scope="module")
def plan(tmp_path_factory, hf_home) -> dict:
    """`barctl plan --json` on a copy of the recipe (planning may write .barctl/ next to it), offline."""
    project = tmp_path_factory.mktemp("project")
    shutil.copy(RECIPE, project / RECIPE.name)
    shutil.copytree(RECIPES / "deepspeed", project / "deepspeed")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "barctl", "plan", RECIPE.name, "--json"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def flex_olmo_tensors(config: dict, experts: int) -> dict[str, int]:
    """Element count of every tensor of a FlexOlmo MoE with `experts` FFN slots built from a dense OLMo 2
    config (experts=1 without a router: the dense model itself)."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = config["num_attention_heads"] * (hidden // config["num_attention_heads"])
    kv = config["num_key_value_heads"] * (hidden // config["num_attention_heads"])
    tensors = {"model.embed_tokens.weight": vocab * hidden, "model.norm.weight": hidden,
               "lm_head.weight": vocab * hidden}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        tensors.update({
            prefix + "self_attn.q_proj.weight": hidden * q, prefix + "self_attn.k_proj.weight": hidden * kv,
            prefix + "self_attn.v_proj.weight": hidden * kv, prefix + "self_attn.o_proj.weight": q * hidden,
            prefix + "self_attn.q_norm.weight": q, prefix + "self_attn.k_norm.weight": kv,
            prefix + "post_attention_layernorm.weight": hidden, prefix + "post_feedforward_layernorm.weight": hidden,
            prefix + "mlp.experts.gate_up_proj": experts * 2 * inter * hidden,
            prefix + "mlp.experts.down_proj": experts * hidden * inter,
        })
        if experts > 1:
            tensors[prefix + "mlp.gate.weight"] = experts * hidden
    return tensors


def trainable(config: dict, experts: int, groups: set[str], anchor_row_trains: bool = False) -> int:
    """Parameters of `groups` in that MoE; of the expert tensors only slots 1.. count (slot 0, the anchor's
    FFN, never trains), and of the routers only rows 1.. unless `anchor_row_trains` (router training)."""
    def group(name: str) -> str:
        for key, found in (("mlp.experts.", "expert"), ("mlp.gate.", "router"), ("embed_tokens", "embeddings"),
                           ("lm_head", "lm_head"), ("self_attn.", "attention")):
            if key in name:
                return found
        return "norms"

    total = 0
    for name, count in flex_olmo_tensors(config, experts).items():
        if group(name) in groups:
            frozen_row = group(name) == "expert" or (group(name) == "router" and not anchor_row_trains)
            total += count * (experts - 1) // experts if frozen_row else count
    return total


def test_the_recipe_validates():
    result = barctl("validate", RECIPE, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"valid": True, "errors": []}


def test_plan_creates_every_node_in_order(plan):
    expected = ["base"]
    for expert, stages in STAGES.items():
        expected += [f"experts.{expert}.branch"] + [f"experts.{expert}.{stage}" for stage in stages]
    expected += ["merge", "router", "eval.anchor"] + [f"eval.experts.{expert}" for expert in STAGES]
    expected += ["eval.merged", "gates", "export"]
    assert [a["node_id"] for a in plan["actions"]] == expected
    assert {a["action"] for a in plan["actions"]} == {"create"}
    assert plan["counts"] == {"build": len(expected), "rebuild": 0, "remove": 0}


def test_plan_counts_the_trainable_parameters_of_a_7b_flex_olmo(plan):
    dense = sum(flex_olmo_tensors(OLMO2_7B_CONFIG, experts=1).values())
    assert round(dense / 1e9, 1) == 7.3  # OLMo 2 7B
    slot = 3 * 4096 * 11008 * 32  # one FFN: gate, up and down projections in all 32 layers
    expected = {f"experts.{expert}.{stage}": trainable(OLMO2_7B_CONFIG, 2, BAR_GROUPS[stage])
                for expert, stages in STAGES.items() for stage in stages}
    expected["router"] = trainable(OLMO2_7B_CONFIG, len(STAGES) + 1, {"router"}, anchor_row_trains=True)  # 5 slots
    assert plan["trainable"] == expected
    assert expected["experts.math.midtrain"] == slot + 4096 * 32  # router row 1; row 0 is the anchor's
    assert expected["experts.math.grpo"] == dense + 4096 * 32  # all but the anchor slot and router row
    assert expected["router"] == 5 * 4096 * 32


def test_hub_datasets_are_fingerprinted_by_id_and_revision_only(recipe, tmp_path):
    cache = FingerprintCache(tmp_path / "digests.json")
    for name, spec in recipe.datasets.items():
        assert fingerprint(spec, cache) == {"kind": "hub", "id": spec["hub"], "revision": "main",
                                            "pinned": False}, name


def test_every_stage_runs_on_8_gpus_with_deepspeed_zero2(recipe, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file  # imports torch: only here

    for expert, stages in STAGES.items():
        for stage in stages:
            assert stage_launcher(recipe, f"experts.{expert}.{stage}") == {
                "kind": "accelerate", "config_file": ACCELERATE_CONFIG, "num_processes": 8, "num_machines": 1}
    command = accelerate_command(stage_launcher(recipe, "experts.math.grpo"), recipe, "experts.math.grpo",
                                 tmp_path / "out", tmp_path / "work")
    assert command[command.index("--config_file") + 1] == str(RECIPES / ACCELERATE_CONFIG)
    assert command[command.index("--num_processes") + 1] == "8"
    assert command[command.index("--node") + 1] == "experts.math.grpo"

    accelerate = load_config_from_file(str(RECIPES / ACCELERATE_CONFIG))
    assert accelerate.distributed_type == "DEEPSPEED"
    assert accelerate.mixed_precision is None  # accelerate refuses it next to a deepspeed_config_file
    # accelerate runs in the manifest's directory, so the DeepSpeed file is relative to it
    deepspeed = json.loads((RECIPES / accelerate.deepspeed_config["deepspeed_config_file"]).read_text())
    assert deepspeed["zero_optimization"]["stage"] == 2  # ZeRO-3 would partition the anchor slot
    assert deepspeed["bf16"]["enabled"] == "auto"
    # no DeepSpeed optimizer or scheduler: the Trainer's AdamW takes the recipe's betas and schedule
    assert not {"optimizer", "scheduler"} & deepspeed.keys()


def test_the_paper_hyperparameters(recipe):
    math = {stage.kind: stage for stage in recipe.expert("math").stages}
    midtrain, sft, grpo = math["midtrain"].training, math["sft"].training, math["grpo"].training
    assert (midtrain["learning_rate"], midtrain["lr_scheduler"], midtrain["warmup_steps"]) == (9e-4, "cosine", 2000)
    assert (midtrain["trl"]["adam_beta1"], midtrain["trl"]["adam_beta2"], midtrain["weight_decay"]) == (0.9, 0.95, 0)
    assert (sft["learning_rate"], sft["epochs"]) == (1e-4, 2)
    assert (grpo["learning_rate"], grpo["trl"]["beta"], grpo["trl"]["num_generations"]) == (6e-7, 0, 8)
    processes = math["grpo"].launcher["num_processes"]
    completions = processes * grpo["batch_size"] * grpo["gradient_accumulation"]
    assert completions // grpo["trl"]["num_generations"] == 64  # prompts a step
    router = recipe.routing["train"]
    assert (router["fraction"], router["training"]["learning_rate"], router["training"]["epochs"]) == (0.05, 1e-4, 2)
    assert recipe.routing["top_k"] == "all" and recipe.output["architecture"] == "flex_olmo"
