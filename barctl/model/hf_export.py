"""Export the final MoE (router swap, dtype cast, sharding, model card) and smoke-test it."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from barctl.errors import BarctlError
from barctl.model.checkpoint import CheckpointReader, ShardedWriter, copy_side_files, write_config
from barctl.model.families import moe_family_for_moe_config
from barctl.model.router_weights import router_names
from barctl.progress import Track

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

SMOKE_PROMPT = "What is 12 + 30?"


def export(
    moe_dir: Path,
    out_dir: Path,
    *,
    router_file: Path | None,
    dtype: str | None,
    max_shard_bytes: int,
    model_card: str,
    top_k: int | None,
    track: Track = iter,
) -> None:
    """Write the exported MoE to `out_dir`, atomically: a temporary sibling renamed into place.

    `track` counts the tensors as they are written (barctl.progress)."""
    if dtype is not None and dtype not in DTYPES:
        raise BarctlError(f"dtype must be one of {', '.join(DTYPES)} or None, got {dtype!r}")
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(Path(moe_dir), tmp, router_file, dtype, max_shard_bytes, model_card, top_k, track)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(moe_dir, tmp, router_file, dtype, max_shard_bytes, model_card, top_k, track: Track) -> None:
    with CheckpointReader(moe_dir) as reader:
        family = moe_family_for_moe_config(reader.config)
        config = dict(reader.config)
        if top_k is not None:
            if not 1 <= top_k <= family.num_experts(config):
                raise BarctlError(f"top_k must be between 1 and {family.num_experts(config)}, got {top_k}")
            config["num_experts_per_tok"] = top_k
        routers = _load_router(router_file, reader) if router_file is not None else {}
        target = DTYPES[dtype] if dtype else None
        writer = ShardedWriter(tmp, max_shard_bytes)
        for name in track(reader.names()):
            tensor = routers[name] if name in routers else reader.get(name)
            if target is not None and tensor.is_floating_point():
                tensor = tensor.to(target)
            writer.add(name, tensor)
        writer.close()
    if dtype:
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    write_config(tmp, config)
    copy_side_files(moe_dir, tmp)
    (tmp / "README.md").write_text(model_card)


def _load_router(router_file: Path, reader: CheckpointReader) -> dict[str, torch.Tensor]:
    expected = router_names(reader)
    try:
        with safe_open(router_file, "pt") as f:
            found = set(f.keys())
            missing = [n for n in expected if n not in found]
            if missing or len(found) != len(expected):
                extra = sorted(found - set(expected))
                raise BarctlError(
                    f"router file {router_file} does not fit {reader.dir}: "
                    + (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}")
                )
            routers = {n: f.get_tensor(n) for n in expected}
    except (OSError, RuntimeError) as e:
        raise BarctlError(f"cannot read router file {router_file}: {e}") from None
    for name, tensor in routers.items():
        if tuple(tensor.shape) != reader.shape_of(name):
            raise BarctlError(
                f"router file {router_file}: {name} has shape {list(tensor.shape)}, "
                f"the model's is {list(reader.shape_of(name))}"
            )
        routers[name] = tensor.to(reader.dtype_of(name))
    return routers


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# A checkpoint up to this size is smoke-tested whole; a larger one through a slice (`smoke_test`).
FULL_LOAD_BYTES = 4 << 30
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def smoke_test(out_dir: Path, max_new_tokens: int = 4, full_load_bytes: int = FULL_LOAD_BYTES) -> dict:
    """Load with stock transformers, check finite logits and greedy-generate a few tokens.

    A checkpoint above `full_load_bytes` (a 5x7B is 49 GB in bf16) is not loaded whole: stock transformers
    loads a slice of it (the config cut to the first layer; the embeddings, that layer, the final norm and the
    head, read from the shards), and the safetensors headers show that every other layer holds the same
    tensors, of the same shapes, as the first. `loaded_layers` says how many layers were loaded.
    """
    start = time.perf_counter()
    with CheckpointReader(out_dir) as reader:
        layers = int(reader.config["num_hidden_layers"])
        size = sum(math.prod(reader.shape_of(n)) * reader.dtype_of(n).itemsize for n in reader.names())
        if size <= full_load_bytes:
            result = _load_and_generate(out_dir, out_dir, max_new_tokens)
            return {**result, "loaded_layers": layers, "seconds": round(time.perf_counter() - start, 3)}
        with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.smoke-", dir=out_dir.parent) as tmp:
            _write_first_layer(reader, out_dir, Path(tmp))
            result = _load_and_generate(Path(tmp), out_dir, max_new_tokens)
        _check_layers_alike(reader, out_dir, layers)
    return {**result, "loaded_layers": 1, "seconds": round(time.perf_counter() - start, 3)}


def _write_first_layer(reader: CheckpointReader, out_dir: Path, slice_dir: Path) -> None:
    """A checkpoint of `out_dir`'s first layer: its config with one layer (per-layer lists cut to their first
    entry), the tensors outside the layers and those of layer 0, the tokenizer and other side files."""
    config = dict(reader.config)
    layers = int(config["num_hidden_layers"])
    config.update({key: value[:1] for key, value in config.items() if isinstance(value, list) and len(value) == layers})
    config["num_hidden_layers"] = 1
    tensors = {}
    for name in reader.names():
        layer = _LAYER.match(name)
        if layer is None or layer.group(1) == "0":
            tensors[name] = reader.get(name)
    save_file(tensors, slice_dir / "model.safetensors", metadata={"format": "pt"})
    write_config(slice_dir, config)
    copy_side_files(out_dir, slice_dir)


def _check_layers_alike(reader: CheckpointReader, out_dir: Path, layers: int) -> None:
    """BarctlError unless layers 0 .. layers-1 each hold the first layer's tensor names and shapes."""
    found: dict[int, dict[str, tuple[int, ...]]] = {}
    for name in reader.names():
        layer = _LAYER.match(name)
        if layer is not None:
            found.setdefault(int(layer.group(1)), {})[layer.group(2)] = reader.shape_of(name)
    if sorted(found) != list(range(layers)):
        raise BarctlError(f"smoke test: {out_dir} holds tensors of layers {sorted(found)[:3]}...; "
                          f"its config says {layers} layers")
    first = found[0]
    for index, tensors in found.items():
        missing, unexpected = sorted(first.keys() - tensors.keys()), sorted(tensors.keys() - first.keys())
        reshaped = sorted(n for n in first.keys() & tensors.keys() if first[n] != tensors[n])
        if missing or unexpected or reshaped:
            raise BarctlError(f"smoke test: layer {index} of {out_dir} differs from layer 0 (missing: "
                              f"{missing[:3] or 'none'}; unexpected: {unexpected[:3] or 'none'}; "
                              f"other shapes: {reshaped[:3] or 'none'})")


def _load_and_generate(model_dir: Path, out_dir: Path, max_new_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        # (model, loading info): transformers' annotations know only the model
        model, info = cast(tuple[Any, dict[str, Any]],
                           AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise BarctlError(f"smoke test: stock transformers cannot load {out_dir}: {e}") from None
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise BarctlError(f"smoke test: loading {out_dir} did not match its weights: {bad}")
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": SMOKE_PROMPT}], tokenize=False, add_generation_prompt=True
        )
    else:
        prompt = SMOKE_PROMPT
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
        if not torch.isfinite(logits).all():
            raise BarctlError(f"smoke test: {out_dir} produced non-finite logits")
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return {"generated": tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)}
