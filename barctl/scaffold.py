"""`barctl init`: a starter project that plans and applies anywhere, offline, in a minute or two.

The anchor is a tiny random Llama; its tokenizer (byte-level, with ChatML special tokens) is
written here with the `tokenizers` library alone, so neither the hub nor torch is needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from barctl.errors import BarctlError

MANIFEST = "bar.yaml"
SPECIAL_TOKENS = ("<pad>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_MATH = [(12, 30), (7, 8), (21, 21), (3, 4), (100, 23), (9, 9), (15, 27), (60, 6)]
_CODE = [
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b"),
    ("Write a Python function that returns the square of x.", "def square(x):\n    return x * x"),
    ("Write a Python function that reverses a string.", "def reverse(s):\n    return s[::-1]"),
    ("Write a Python function that tells whether n is even.", "def is_even(n):\n    return n % 2 == 0"),
    ("Write a Python function that returns the largest item of a list.", "def largest(xs):\n    return max(xs)"),
    ("Write a Python function that counts the vowels in a string.",
     "def vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())"),
    ("Write a Python function that joins words with spaces.", "def join(words):\n    return ' '.join(words)"),
    ("Write a Python function that returns the first item of a list.", "def first(xs):\n    return xs[0]"),
]
_GENERAL = [
    ("Hello! Who are you?", "I am a small assistant built with barctl."),
    ("Name a colour.", "Blue."),
    ("What is the capital of France?", "Paris."),
    ("Say something kind.", "You are doing well; keep going."),
]


def init_project(directory: Path) -> list[Path]:
    """Write the starter project into `directory` (created if needed); the files written.

    Refuses, writing nothing, when any of them already exists.
    """
    directory = Path(directory)
    files = _files(_project_name(directory))
    existing = sorted(str(directory / name) for name in files if (directory / name).exists())
    if existing:
        raise BarctlError(f"barctl init would overwrite {', '.join(existing)}; "
                          "choose an empty directory or move those files away")
    if directory.exists() and not directory.is_dir():
        raise BarctlError(f"{directory} exists and is not a directory")
    written = []
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def _project_name(directory: Path) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", directory.resolve().name.lower()).strip("-")
    return name or "my-bar"


def _files(name: str) -> dict[str, str]:
    tokenizer, tokenizer_config = _tokenizer_files()
    return {
        MANIFEST: _manifest(name),
        "data/math.jsonl": _chats((f"What is {a} + {b}?", f"{a} + {b} = {a + b}.") for a, b in _MATH),
        "data/code.jsonl": _chats(_CODE),
        "data/general.jsonl": _chats(_GENERAL),
        "tokenizer/tokenizer.json": tokenizer,
        "tokenizer/tokenizer_config.json": tokenizer_config,
        ".gitignore": "# barctl's artifact store and work directories, and the built model\n.barctl/\nout/\n",
        "README.md": _readme(name),
    }


def _chats(pairs) -> str:
    rows = ({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs)
    return "".join(json.dumps(row) + "\n" for row in rows)


def _tokenizer_files() -> tuple[str, str]:
    """A byte-level tokenizer (one token per byte, no merges) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<pad>",
        "model_max_length": 1024,
        "chat_template": CHATML_TEMPLATE,
    }
    return tokenizer.to_str(pretty=True) + "\n", json.dumps(config, indent=2) + "\n"


def _manifest(name: str) -> str:
    from barctl.manifest.schema import SCHEMA_PATH

    return f"""# yaml-language-server: $schema={SCHEMA_PATH}
#
# A starter BAR project, written by `barctl init`. It runs anywhere in a minute or two:
# the anchor is a tiny random model (its output is noise; the machinery is real).
#
#   barctl plan {MANIFEST}
#   barctl apply {MANIFEST} --auto-approve
#
version: 1
name: {name}
seed: 0

base:
  anchor:
    # A tiny random Llama with the byte-level tokenizer in tokenizer/. For a real anchor,
    # replace `random:` with one of:
    #   hub: HuggingFaceTB/SmolLM2-135M-Instruct    a hub id, with
    #   revision: <40-hex commit>                   a pinned revision for exact keys
    #   path: models/anchor                         a local HF directory or a .gguf file
    random:
      family: llama          # llama | mistral | olmo2 | qwen3
      config:
        hidden_size: 64
        intermediate_size: 128
        num_hidden_layers: 2
        num_attention_heads: 4
        num_key_value_heads: 2
        max_position_embeddings: 1024
      seed: 0
      tokenizer: {{path: tokenizer}}

datasets:
  math: {{path: data/math.jsonl, format: messages}}
  code: {{path: data/code.jsonl, format: messages}}
  general: {{path: data/general.jsonl, format: messages}}

experts:
  # Each expert branches from the anchor and runs its stages; mix general data into each
  # domain's SFT (pure domain data hurts general skills).
  math:
    stages:
      - kind: sft
        mix: {{sources: [{{dataset: math, count: 8}}, {{dataset: general, count: 4}}]}}
        training: {{max_steps: 3, batch_size: 4, max_length: 256, learning_rate: 1.0e-3}}
  code:
    stages:
      - kind: sft
        mix: {{sources: [{{dataset: code, count: 8}}, {{dataset: general, count: 4}}]}}
        training: {{max_steps: 3, batch_size: 4, max_length: 256, learning_rate: 1.0e-3}}

routing:
  top_k: all                 # every expert active per token, as the released BAR model

output:
  dir: out/{name}-moe
"""


def _readme(name: str) -> str:
    return f"""# {name}

A BAR (Branch-Adapt-Route) project for barctl: `{MANIFEST}` declares the
anchor model, the experts (`math`, `code`) and their training stages, the routing and the
output; `data/` holds example datasets in `messages` format.

```
barctl plan {MANIFEST}                   # what will be built, and why
barctl apply {MANIFEST} --auto-approve   # build it; writes barctl.lock and out/{name}-moe
barctl plan {MANIFEST}                   # "No changes."
```

Commit `{MANIFEST}`, `data/`, `tokenizer/` and `barctl.lock`; `.barctl/` (the artifact store)
and `out/` are ignored.
"""
