"""Human-readable output: plans (Terraform-style), apply progress, the lockfile, the graph.

Rich styles the output on a terminal; piped output is plain text.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from barctl.engine.graph import Graph
from barctl.engine.plan import Action, Plan

SYMBOLS = {"create": ("+", "green"), "rebuild": ("-/+", "yellow"), "replace": ("-/+", "yellow"),
           "repair": ("~", "cyan"), "remove": ("-", "red")}


def print_plan(console: Console, plan: Plan, title: str) -> None:
    if plan.targets:
        console.print(f"[yellow]Targeting {', '.join(plan.targets)}: other nodes are left out.[/]")
    changes = [a for a in plan.actions if a.action != "keep"]
    if not changes:
        console.print("[bold green]No changes.[/] The built artifacts match the manifest.")
        return
    console.print(f"barctl will perform these actions for [bold]{escape(title)}[/]:\n")
    width = max(len(a.node_id) for a in changes)
    for action in changes:
        symbol, colour = SYMBOLS[action.action]
        console.print(f"  [{colour}]{symbol:>3}[/] {escape(action.node_id):<{width}}  [{colour}]{action.action}[/]")
        for reason in action.reasons:
            console.print(f"        [dim]# because {escape(reason)}[/]")
        if action.node_id in plan.trainable:
            console.print(f"        [dim]# trains {plan.trainable[action.node_id]:,} parameters[/]")
        if action.node_id in plan.costs:
            console.print(f"        [dim]# {cost_text(plan.costs[action.node_id])}[/]")
        if action.node_id in plan.memory:
            console.print(f"        [dim]# {memory_text(plan.memory[action.node_id])}[/]")
    kept = len(plan.actions) - len(changes)
    console.print()
    console.print(summary_line("Plan", plan.counts()) + (f" ({kept} unchanged)" if kept else ""))
    if plan.costs:
        console.print(total_cost_line(plan.cost_total))


def cost_text(cost: dict[str, Any]) -> str:
    """One training node's estimate: tokens, and FLOPs as 6 x active parameters x tokens."""
    if cost["tokens"] is None:
        return (f"tokens unknown until the data is read (a mix by fractions); "
                f"{cost['compute_parameters']:,} active parameters per token")
    return (f"at most {cost['tokens']:,} tokens, {cost['flops']:.3g} FLOPs "
            f"(6 x {cost['compute_parameters']:,} active parameters per token x tokens)")


def memory_text(estimate: dict[str, Any]) -> str:
    """A node's estimated peak memory and its parts (barctl.engine.memory)."""
    from barctl.engine.memory import GIB, breakdown

    who = "per process" if estimate["per"] == "process" else "in all"
    return f"peak memory about {estimate['total'] / GIB:.1f} GiB {who} ({breakdown(estimate)})"


def total_cost_line(cost_total: dict[str, Any]) -> str:
    unknown = f", not counting {', '.join(cost_total['unknown'])}" if cost_total["unknown"] else ""
    return (f"Training: at most {cost_total['tokens']:,} tokens, {cost_total['flops']:.3g} FLOPs{unknown} "
            f"(upper bounds from the settings, not the data).")


def summary_line(prefix: str, counts: dict[str, int]) -> str:
    return (f"[bold]{prefix}:[/] {counts['build']} to build, {counts['rebuild']} to rebuild, "
            f"{counts['remove']} to remove.")


def apply_summary(built: int, rebuilt: int, removed: int) -> str:
    return f"[bold green]Apply complete![/] {built} built, {rebuilt} rebuilt, {removed} removed."


class ConsoleReporter:
    """Prints each node as it starts and finishes."""

    def __init__(self, console: Console):
        self.console = console

    def start(self, action: Action, position: str | None = None) -> None:
        symbol, colour = SYMBOLS[action.action]
        where = f" [dim]({escape(position)})[/]" if position else ""
        self.console.print(f"[{colour}]{symbol:>3}[/] {escape(action.node_id)}: {action.action} ...{where}")

    def say(self, action: Action, message: str) -> None:
        self.console.print(f"      [dim]{escape(action.node_id)}: {escape(message)}[/]")

    def done(self, action: Action, entry: dict[str, Any]) -> None:
        artifact = entry["artifact"]
        self.console.print(
            f"      {escape(action.node_id)}: done in {entry['metrics']['seconds']:.1f}s "
            f"({human_size(artifact['size'])}, {artifact['files']} files)"
        )

    def removed(self, action: Action) -> None:
        self.console.print(f"[red]  -[/] {escape(action.node_id)}: removed from the lockfile "
                           "(its artifact stays in the store)")


def print_lock(console: Console, entries: dict[str, dict[str, Any]]) -> None:
    if not entries:
        console.print("Nothing is built yet: the lockfile is empty or absent.")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("node", "kind", "key", "size", "seconds", "built (UTC)"):
        table.add_column(column, no_wrap=True)
    for node_id, entry in entries.items():
        artifact = entry.get("artifact", {})
        built = entry.get("built_at", "")[:16].replace("T", " ")
        table.add_row(node_id, entry.get("kind", "?"), entry.get("key", "?")[:12],
                      human_size(artifact.get("size", 0)), str(entry.get("metrics", {}).get("seconds", "")), built)
    console.print(table)
    outside = [f"{e['artifact']['path']} ({i})" for i, e in entries.items()
               if not e.get("artifact", {}).get("path", "").startswith(".barctl/")]
    console.print("\nArtifacts live in .barctl/store/<key prefix>/<key>" +
                  (f"; outside the store: {', '.join(outside)}" if outside else "") + ".")


def graph_text(graph: Graph, fmt: str) -> str:
    if fmt == "dot":
        lines = ["digraph barctl {", "  rankdir=LR;"]
        lines += [f'  "{n.id}" [label="{n.id}\\n({n.kind})"];' for n in graph]
        lines += [f'  "{i}" -> "{n.id}";' for n in graph for i in n.inputs]
        return "\n".join(lines + ["}"])
    ids = {node_id: f"n{index}" for index, node_id in enumerate(graph.ids)}
    lines = ["flowchart LR"]
    lines += [f'  {ids[n.id]}["{n.id}<br/>{n.kind}"]' for n in graph]
    lines += [f"  {ids[i]} --> {ids[n.id]}" for n in graph for i in n.inputs]
    return "\n".join(lines)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def print_evaluations(console: Console, domains: list[str], slots: list[str],
                      entries: dict[str, dict[str, Any]]) -> None:
    """BAR's table (models as rows, domains and their average as columns, each score with its 95% interval),
    the routing report, and a warning when the evaluation sets are too small to tell experts from the anchor."""
    from barctl.evaluate.results import AVERAGE, eval_intervals, eval_scores, routing_report, small_sample_warning

    scores = eval_scores(entries, slots[1:])
    if not scores:
        return
    intervals = eval_intervals(entries)
    columns = [*domains, AVERAGE]
    cells = {model: [score_cell(row[d], intervals[model].get(d)) if d in row else "-" for d in columns]
             for model, row in scores.items()}
    # one line per model where the terminal is wide enough; else each interval goes under its score
    widest = max(len(cell) for row in cells.values() for cell in row)
    if console.width < max(map(len, scores)) + len(columns) * (max(widest, *map(len, columns)) + 3) + 4:
        cells = {model: [cell.replace(" [", "\n[", 1) for cell in row] for model, row in cells.items()}
    table = Table(title="Evaluation (higher is better; 95% intervals)", title_justify="left")
    table.add_column("model")
    for column in columns:
        table.add_column(column, justify="right")
    for model, row in cells.items():
        table.add_row(escape(model), *row)
    console.print(table)
    shares = routing_report(entries)
    if shares:
        top1, entropy = routing_report(entries, "routing_top1"), routing_report(entries, "routing_entropy")
        routing = Table(title=routing_title(len(slots)), title_justify="left")
        routing.add_column("domain")
        for slot in slots:
            routing.add_column(escape(slot), justify="right")
        routing.add_column("entropy", justify="right")
        for domain, row in shares.items():
            routing.add_row(escape(domain), *routing_cells(row, top1.get(domain)),
                            f"{entropy[domain]:.3f}" if domain in entropy else "-")
        console.print(routing)
    warning = small_sample_warning(entries)
    if warning:
        console.print(f"[yellow]{escape(warning)}[/]")


def score_cell(score: float, interval: list[float] | None) -> str:
    """A score with its 95% interval, e.g. `0.420 [0.330, 0.520]`."""
    return f"{score:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def routing_title(slots: int) -> str:
    return (f"Merged model's routing per slot: share of routing weight / share of top-1 choices (over tokens and "
            f"layers); entropy of the routing distribution in nats (uniform over {slots} slots: "
            f"{math.log(slots):.3f})")


def routing_cells(shares: list[float], top1: list[float] | None) -> list[str]:
    """Per slot, `mean share / top-1 share`, e.g. `24.0% / 31.5%`."""
    if top1 is None:
        return [f"{share:.1%}" for share in shares]
    return [f"{share:.1%} / {first:.1%}" for share, first in zip(shares, top1)]
