#!/usr/bin/env python
"""CLI start-up benchmark: `barctl --help`, `barctl validate` and `barctl plan` stay fast and torch-free.

Times each command as the median of N (default 5) fresh `python -m barctl ...` subprocesses
(after one discarded warm-up run, so plan's cache under recipes/.barctl exists), then runs each
once more under `python -X importtime` and FAILS if torch (or any torch.* module) was imported.
Also reports the cumulative import time of `barctl.cli` and a bare `python -c pass` for reference.

Prints a table and writes startup_bench.json next to this script (or --json PATH); exits 1
if any command imported torch or failed.
Run by hand:  python benchmarks/startup_bench.py [--manifest recipes/tiny.yaml] [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FORBIDDEN = ("torch", "transformers", "safetensors.torch")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    return time.perf_counter() - start, proc


def imported_modules(cmd: list[str]) -> tuple[dict[str, int], subprocess.CompletedProcess]:
    """Module name -> cumulative import time (us) from `python -X importtime`."""
    _, proc = run([cmd[0], "-X", "importtime", *cmd[1:]])
    modules = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        modules[name] = int(cumulative)
    return modules, proc


def cli_children(py: str) -> list[tuple[int, str]]:
    """(cumulative us, name) of the modules barctl.cli itself imports first, largest first."""
    _, proc = run([py, "-X", "importtime", "-c", "import barctl.cli"])
    lines = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, raw = line[len("import time:"):].split("|")
            name = raw.rstrip()[1:]  # one separator space, then two per nesting level
            lines.append((len(name) - len(name.lstrip()), int(cumulative), name.strip()))
    at = next(i for i, (_, _, n) in enumerate(lines) if n == "barctl.cli")
    depth, children = lines[at][0], []
    for d, us, n in reversed(lines[:at]):
        if d <= depth:
            break
        if d == depth + 2:
            children.append((us, n))
    return sorted(children, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time `barctl --help`, `validate` and `plan` (median of fresh subprocesses) "
        "and check that none of them imports torch."
    )
    parser.add_argument("--manifest", default="recipes/tiny.yaml", help="manifest, relative to the repo root "
                        "(default recipes/tiny.yaml; plan writes its cache under recipes/.barctl)")
    parser.add_argument("--runs", type=int, default=5, help="fresh runs per command (default 5)")
    parser.add_argument("--json", type=Path, default=HERE / "startup_bench.json",
                        help="results file (default startup_bench.json next to this script)")
    args = parser.parse_args()

    py = sys.executable
    commands = {
        "python -c pass": [py, "-c", "pass"],
        "barctl --help": [py, "-m", "barctl", "--help"],
        "barctl validate": [py, "-m", "barctl", "validate", args.manifest],
        "barctl plan": [py, "-m", "barctl", "plan", args.manifest],
    }
    rows, failed = [], False
    for label, cmd in commands.items():
        _, warm = run(cmd)  # warm-up: page cache, .pyc files, plan's fingerprint cache
        times = []
        for _ in range(args.runs):
            elapsed, proc = run(cmd)
            times.append(elapsed)
            if proc.returncode != 0:
                failed = True
                print(f"{label} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}", file=sys.stderr)
        modules, _ = imported_modules(cmd)
        heavy = sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
        torch_free = not any(m == "torch" or m.startswith("torch.") for m in modules)
        if label != "python -c pass" and not torch_free:
            failed = True
        rows.append({
            "command": label,
            "argv": [Path(cmd[0]).name, *cmd[1:]],
            "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3),
            "max_s": round(max(times), 3),
            "runs_s": [round(t, 3) for t in times],
            "modules_imported": len(modules),
            "torch_free": torch_free,
            "heavy_modules": heavy[:10],
            "barctl_cli_import_ms": round(modules["barctl.cli"] / 1000, 1) if "barctl.cli" in modules else None,
        })

    # barctl.cli import alone: cumulative -X importtime figure, median of the runs.
    cli_import = []
    for _ in range(args.runs):
        modules, _ = imported_modules([py, "-c", "import barctl.cli"])
        cli_import.append(modules["barctl.cli"] / 1000)
    top = cli_children(py)[:6]

    print(f"{'command':<18} {'median s':>9} {'min s':>7} {'max s':>7} {'modules':>8}  torch-free")
    print("-" * 62)
    for r in rows:
        print(f"{r['command']:<18} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} "
              f"{r['modules_imported']:>8}  {'yes' if r['torch_free'] else 'NO: ' + ', '.join(r['heavy_modules'])}")
    print(f"\nimport barctl.cli (cumulative, -X importtime): median {statistics.median(cli_import):.1f} ms")
    print("  its largest direct imports: " + ", ".join(f"{m} {us / 1000:.0f} ms" for us, m in top))

    results = {
        "benchmark": "startup_bench",
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "manifest": args.manifest,
        "runs": args.runs,
        "commands": rows,
        "barctl_cli_import_ms_median": round(statistics.median(cli_import), 1),
        "barctl_cli_import_ms_runs": [round(x, 1) for x in cli_import],
        "barctl_cli_largest_direct_imports_ms": {m: round(us / 1000, 1) for us, m in top},
        "pass": not failed,
    }
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    print("PASS" if not failed else "FAIL")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
