#!/usr/bin/env python
"""Evaluation generation: barctl's `generate` vs a plain `model.generate` loop, same model, prompts and limits.

Both variants decode greedily with the same batch size, `max_new_tokens` and prompt cut:

  A  barctl   barctl.evaluate.generate.generate (prompts batched by token length, completions
              returned in the prompts' order)
  B  plain    the prompts in file order, `batch_size` at a time, left-padded, `model.generate`

Each variant runs in this one process on one thread, interleaved (A, B, A, B, ...) --repeat
times, and is timed in CPU seconds (user+sys of this process, time.process_time) and wall
seconds. The completions of A and B must be the same texts (checked: batching does not change a
greedy completion). The model is the anchor of a built SmolLM2 demo (`--model`, a Hugging Face
directory), the prompts a demo evaluation file (`--data`).

Run by hand, e.g. after `barctl apply recipes/smollm2-bar.yaml --target eval.anchor`:
    python benchmarks/eval_bench.py --model recipes/.barctl/store/<..>/<key>/anchor \
        --data recipes/data/smollm2/tools_eval.jsonl --max-new-tokens 48 --batch-size 50
Prints a table and writes eval_bench.json next to this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's barctl


def plain_generate(model, tokenizer, prompts, *, max_new_tokens: int, batch_size: int, max_length: int) -> list[str]:
    import torch

    from barctl.evaluate.batching import pad_token_id, padded_batch
    from barctl.evaluate.generate import encode_prompt

    pad_id = pad_token_id(tokenizer)
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            ids = [encode_prompt(tokenizer, p)[-max_length:] for p in prompts[start : start + batch_size]]
            input_ids, mask = padded_batch(ids, pad_id, "left")
            generated = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad_id)
            out += tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
    return out


def timed(function, *args, **kwargs) -> tuple[list[str], float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import torch

    from barctl.evaluate.generate import encode_prompt, generate
    from barctl.training.common import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model(args.model)
    model.eval()
    rows = [json.loads(line) for line in args.data.read_text().splitlines()[: args.rows]]
    prompts = [row["prompt"] for row in rows]
    limits = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "max_length": args.max_length}
    runs: dict[str, list[tuple[float, float]]] = {"barctl": [], "plain": []}
    texts = {}
    for _ in range(args.repeat):
        for name, function in (("barctl", generate), ("plain", plain_generate)):
            texts[name], cpu, wall = timed(function, model, tokenizer, prompts, **limits)
            runs[name].append((cpu, wall))
    same = texts["barctl"] == texts["plain"]
    cpu = {name: statistics.median(c for c, _ in values) for name, values in runs.items()}
    wall = {name: statistics.median(w for _, w in values) for name, values in runs.items()}
    tokens = [len(encode_prompt(tokenizer, p)) for p in prompts]
    result = {
        "model": str(args.model), "data": str(args.data), "rows": len(prompts), **limits,
        "prompt_tokens": {"mean": statistics.mean(tokens), "max": max(tokens)},
        "cpu_seconds": cpu, "wall_seconds": wall, "runs": runs,
        "cpu_ratio_plain_over_barctl": cpu["plain"] / cpu["barctl"], "same_completions": same,
        "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{'variant':8} {'CPU s':>8} {'wall s':>8}")
    for name in runs:
        print(f"{name:8} {cpu[name]:8.1f} {wall[name]:8.1f}")
    print(f"plain / barctl CPU time: {result['cpu_ratio_plain_over_barctl']:.2f}; same completions: {same}")
    (HERE / "eval_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
