"""Hugging Face model directory layout, torch-free: config, weight map, side files."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from barctl.errors import BarctlError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")


def read_config(model_dir: Path) -> dict:
    """config.json of a model directory as a dict."""
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BarctlError(f"{model_dir} has no config.json: not a Hugging Face model directory") from None
    except json.JSONDecodeError as e:
        raise BarctlError(f"{path} is not valid JSON: {e}") from None


def weight_map(model_dir: Path) -> dict[str, str]:
    """Tensor name -> safetensors file name; refuses directories holding pickled weights only."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return {name: SINGLE_FILE for name in safetensors_names(single)}
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")) or any(model_dir.glob("*.pth")):
        raise BarctlError(
            f"{model_dir} holds PyTorch pickle weights (*.bin/*.pt) and no safetensors; barctl never unpickles. "
            "Convert the model to safetensors (e.g. save_pretrained with safe_serialization) first."
        )
    raise BarctlError(f"{model_dir} has no {SINGLE_FILE} or {INDEX_FILE}")


def safetensors_names(path: Path) -> list[str]:
    """Tensor names in a safetensors file, read from its JSON header."""
    with open(path, "rb") as f:
        try:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        except (struct.error, ValueError) as e:
            raise BarctlError(f"{path} is not a valid safetensors file ({e})") from None
    return [name for name in header if name != "__metadata__"]


MAX_HEADER = 100 * 2**20  # the safetensors format's own limit


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is damaged or incomplete (its header against its size), or None.

    Reads the header only: a file cut short by a failed copy or download is caught before
    it is stored or loaded.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path} is not a safetensors file: {size} bytes, less than its 8-byte header length"
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            return f"{path} is cut short or not a safetensors file: its header claims {length:,} bytes"
        try:
            header = json.loads(f.read(length))
            ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            return f"{path} has a damaged safetensors header ({e})"
    data = size - 8 - length
    if max(ends, default=0) != data:
        return (f"{path} is incomplete: its header describes {max(ends, default=0):,} bytes of tensors, "
                f"the file holds {data:,}")
    return None


def copy_side_files(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy tokenizer, generation config, chat template and other non-weight files; return their names."""
    copied = []
    for path in sorted(Path(src_dir).iterdir()):
        name = path.name
        if not path.is_file() or name.startswith(".") or name == "config.json":
            continue
        if name.endswith(_WEIGHT_SUFFIXES) or name.endswith(".index.json"):
            continue
        shutil.copy2(path, Path(dst_dir) / name)
        copied.append(name)
    return copied
