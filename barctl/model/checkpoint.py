"""Streamed safetensors I/O over Hugging Face model directories, one tensor at a time."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from barctl.errors import BarctlError
from barctl.model.hfdir import INDEX_FILE, SINGLE_FILE, copy_side_files, read_config, weight_map

__all__ = ["CheckpointReader", "ShardedWriter", "copy_side_files", "read_config", "weight_map", "write_config"]

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_SAFETENSORS_DTYPES = {dtype: name for name, dtype in _DTYPES.items()}


class CheckpointReader:
    """Reads the tensors of a safetensors model directory one at a time."""

    def __init__(self, model_dir: Path):
        self.dir = Path(model_dir)
        self.config = read_config(self.dir)
        self._map = weight_map(self.dir)
        self._handles: dict[Path, object] = {}

    def names(self) -> list[str]:
        return sorted(self._map)

    def __contains__(self, name: str) -> bool:
        return name in self._map

    def get(self, name: str) -> torch.Tensor:
        # A short-lived handle: a long-lived one keeps the file mapped, and every page read
        # through it would stay resident, so a merge of N inputs would hold N checkpoints.
        with safe_open(self._path(name), "pt") as handle:
            return handle.get_tensor(name)

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def dtype_of(self, name: str) -> torch.dtype:
        return _DTYPES[self._handle(name).get_slice(name).get_dtype()]

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _path(self, name: str) -> Path:
        try:
            file = self._map[name]
        except KeyError:
            raise BarctlError(f"{self.dir}: no tensor named {name!r}") from None
        path = self.dir / file
        if not path.is_file():
            raise BarctlError(f"{self.dir}: {file} is listed in the index but missing")
        return path

    def _handle(self, name: str):
        path = self._path(name)
        if path not in self._handles:
            self._handles[path] = safe_open(path, "pt")
        return self._handles[path]


class ShardedWriter:
    """Writes tensors into safetensors shards of at most `max_shard_bytes`, streaming.

    Each tensor's bytes go straight to a data file on disk; when a shard is complete its
    header is written and the data appended after it. Memory stays at one tensor, whatever
    the shard size.
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int):
        if max_shard_bytes <= 0:
            raise BarctlError(f"max shard size must be positive, got {max_shard_bytes} bytes")
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self._header: dict[str, dict] = {}
        self._data: BinaryIO | None = None
        self._offset = 0
        self._shards: list[list[str]] = []
        self._names: set[str] = set()
        self._total = 0
        self._closed = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise BarctlError(f"tensor {name!r} written twice")
        self._names.add(name)
        size = tensor.numel() * tensor.element_size()
        if self._header and self._offset + size > self.max_shard_bytes:
            self._flush()
        if self._data is None:
            self._data = open(self._tmp_name(len(self._shards), "data"), "wb")
        flat = tensor.detach().contiguous().reshape(-1)
        self._data.write(flat.view(torch.uint8).numpy().data if size else b"")
        self._header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                              "data_offsets": [self._offset, self._offset + size]}
        self._offset += size
        self._total += size

    def close(self) -> None:
        """Flush and give the shards their final Hugging Face names (plus the index when sharded)."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        count = len(self._shards)
        if count <= 1:
            if count == 0:
                save_file({}, self.dir / SINGLE_FILE, metadata={"format": "pt"})
            else:
                os.replace(self._tmp_name(0), self.dir / SINGLE_FILE)
            return
        mapping = {}
        for i, names in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.replace(self._tmp_name(i), self.dir / final)
            mapping.update({n: final for n in names})
        index = {"metadata": {"total_size": self._total}, "weight_map": dict(sorted(mapping.items()))}
        (self.dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def _flush(self) -> None:
        if self._data is None:
            return
        self._data.close()
        data_path = self._tmp_name(len(self._shards), "data")
        header = json.dumps({"__metadata__": {"format": "pt"}, **self._header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
        with open(self._tmp_name(len(self._shards)), "wb") as shard, open(data_path, "rb") as data:
            shard.write(struct.pack("<Q", len(header)))
            shard.write(header)
            shutil.copyfileobj(data, shard, length=64 << 20)
        data_path.unlink()
        self._shards.append(list(self._header))
        self._header, self._data, self._offset = {}, None, 0

    def _tmp_name(self, i: int, part: str = "safetensors") -> Path:
        return self.dir / f".shard-{i:05d}.{part}.partial"


def write_config(out_dir: Path, config: dict) -> None:
    (Path(out_dir) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
