"""GGUF header reader (metadata and tensor names only) and its mapping to a Hugging Face config.

gguf.GGUFReader parses every array (49k vocabulary strings for SmolLM2) and takes seconds;
this reader skips array contents and keeps their lengths, which is what planning needs.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from barctl.errors import BarctlError

_SCALARS = {  # GGUF value type -> struct format
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFMeta:
    fields: dict[str, object] = field(default_factory=dict)  # scalars and strings
    array_lengths: dict[str, int] = field(default_factory=dict)  # arrays: only their length
    tensor_names: set[str] = field(default_factory=set)


def read_gguf_meta(path: Path) -> GGUFMeta:
    """Metadata and tensor names of a GGUF file, without reading arrays or weights."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise BarctlError(f"{path} is not a GGUF file (bad magic)")
            (version,) = _unpack(f, "<I")
            if version < 2:
                raise BarctlError(f"{path}: GGUF version {version} is too old; re-convert it with llama.cpp")
            tensor_count, kv_count = _unpack(f, "<QQ")
            _check_fits(f, kv_count * 12 + tensor_count * 24, f"{kv_count:,} fields and {tensor_count:,} tensors")
            meta = GGUFMeta()
            for _ in range(kv_count):
                key = _read_string(f)
                (vtype,) = _unpack(f, "<I")
                if vtype == _ARRAY:
                    meta.array_lengths[key] = _skip_array(f)
                else:
                    meta.fields[key] = _read_value(f, vtype)
            for _ in range(tensor_count):
                meta.tensor_names.add(_read_string(f))
                (n_dims,) = _unpack(f, "<I")
                f.seek(8 * n_dims + 4 + 8, 1)  # dims, ggml type, data offset
            return meta
    except (struct.error, UnicodeDecodeError, KeyError) as e:
        raise BarctlError(f"{path}: corrupt GGUF header ({e})") from None
    except FileNotFoundError:
        raise BarctlError(f"GGUF file {path} does not exist") from None


def gguf_dense_config(meta: GGUFMeta) -> dict:
    """The Hugging Face config dict of a dense GGUF model (llama-style keys)."""
    fields = meta.fields
    arch = str(fields.get("general.architecture", ""))

    def get(key: str, default=None):
        return fields.get(f"{arch}.{key}", default)

    heads = int(get("attention.head_count", 0)) or None
    hidden = get("embedding_length")
    config = {
        "model_type": arch,
        "architectures": [f"{arch.capitalize()}ForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "head_dim": get("attention.key_length", hidden // heads if hidden and heads else None),
        "hidden_act": "silu",
        "vocab_size": get("vocab_size", meta.array_lengths.get("tokenizer.ggml.tokens")),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_parameters": {"rope_theta": get("rope.freq_base", 10000.0), "rope_type": "default"},
        "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": "output.weight" not in meta.tensor_names,
        **gguf_token_ids(meta),
    }
    return {k: v for k, v in config.items() if v is not None}


def gguf_token_ids(meta: GGUFMeta) -> dict:
    """bos/eos/pad token ids of the GGUF tokenizer (pad falls back to eos)."""
    ids = {
        "bos_token_id": meta.fields.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.fields.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.fields.get("tokenizer.ggml.padding_token_id"),
    }
    if ids["pad_token_id"] is None:
        ids["pad_token_id"] = ids["eos_token_id"]
    return ids


def _unpack(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise struct.error("unexpected end of file")
    return struct.unpack(fmt, data)


def _read_string(f: BinaryIO) -> str:
    (n,) = _unpack(f, "<Q")
    _check_fits(f, n, f"a string of {n:,} bytes")
    return f.read(n).decode("utf-8")


def _check_fits(f: BinaryIO, size: int, what: str) -> None:
    """A header that claims more than the file holds is damaged or hostile: refuse it before reading."""
    remaining = os.fstat(f.fileno()).st_size - f.tell()
    if size > remaining:
        raise struct.error(f"it claims {what} at byte {f.tell():,}, but only {remaining:,} bytes follow")


def _read_value(f: BinaryIO, vtype: int):
    if vtype == _STRING:
        return _read_string(f)
    return _unpack(f, _SCALARS[vtype])[0]


def _skip_array(f: BinaryIO) -> int:
    etype, count = _unpack(f, "<IQ")
    element = 8 if etype in (_STRING, _ARRAY) else struct.calcsize(_SCALARS[etype])
    _check_fits(f, count * element, f"an array of {count:,} items")
    if etype == _STRING:
        for _ in range(count):
            (n,) = _unpack(f, "<Q")
            f.seek(n, 1)
    elif etype == _ARRAY:
        for _ in range(count):
            _skip_array(f)
    else:
        f.seek(struct.calcsize(_SCALARS[etype]) * count, 1)
    return count
