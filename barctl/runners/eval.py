"""`eval.<model>`: one model (the anchor, an expert, the merged MoE, a baseline) scored on every declared domain.

The artifact's `results.json` keeps everything (sample completions, per-row results, per-layer
routing); the lock gets the scores and the average with their 95% intervals, and the merged
model's routing report (mean share, top-1 share per slot, entropy).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from barctl.evaluate.results import average
from barctl.runners import NodeContext, model_dir


def run(ctx: NodeContext) -> dict[str, Any]:
    from barctl.data.row_text import row_text
    from barctl.evaluate.metrics import evaluate_domain
    from barctl.evaluate.routing import routing_shares

    model, tokenizer = load_model(ctx)
    results: dict[str, Any] = {}
    routing: dict[str, Any] = {}
    for domain, spec in ctx.config["domains"].items():
        if spec["metric"] == "lm_eval":  # an lm-evaluation-harness task reads its own data: no routing report
            from barctl.evaluate.harness import evaluate_task

            ctx.say(f"{domain}: lm-eval task {spec['task']}")
            include_path = ctx.recipe.resolve(spec["include_path"]) if spec.get("include_path") else None
            results[domain] = evaluate_task(model, tokenizer, spec, include_path)
            continue
        rows = eval_rows(ctx, spec)
        limits = spec["generation"]
        ctx.say(f"{domain}: {spec['metric']} on {len(rows)} rows")
        with ctx.steps(f"{domain}: {spec['metric']}", "rows") as steps:
            results[domain] = evaluate_domain(
                model, tokenizer, rows, spec["metric"], **limits,  # a loss domain's limits have no max_new_tokens
                progress=steps.start(len(rows)).update, judge=ctx.recipe.resolve_judge(spec),
            )
        report = ctx.config.get("routing_report")
        if report:
            routed = rows if report is True else rows.select(range(min(report, len(rows))))
            routing[domain] = routing_shares(model, tokenizer, [row_text(tokenizer, row) for row in routed],
                                             batch_size=limits["batch_size"], max_length=limits["max_length"])
    (ctx.out / "results.json").write_text(json.dumps({"domains": results, "routing": routing}, indent=2) + "\n")
    return lock_metrics({domain: spec["metric"] for domain, spec in ctx.config["domains"].items()}, results, routing)


def lock_metrics(metrics_by_domain: dict[str, str], results: dict[str, Any],
                 routing: dict[str, Any]) -> dict[str, Any]:
    """What the lockfile keeps of an evaluation: scores with their 95% intervals, and the routing report
    averaged over layers. Samples, per-row results and per-layer routing stay in `results.json`."""
    from barctl.evaluate.intervals import average_interval, score_interval

    summary = {domain: {**{k: v for k, v in result.items() if k not in ("samples", "rows")},
                        "ci95": list(score_interval(metrics_by_domain[domain], result["rows"], domain))}
               for domain, result in results.items()}
    metrics: dict[str, Any] = {
        "domains": summary,
        "average": average({d: r["score"] for d, r in results.items()}),
        "average_ci95": list(average_interval({d: (metrics_by_domain[d], r["rows"]) for d, r in results.items()})),
    }
    if routing:
        metrics["routing"] = {domain: _rounded(shares["mean"]) for domain, shares in routing.items()}
        metrics["routing_top1"] = {domain: _rounded(shares["top1"]) for domain, shares in routing.items()}
        metrics["routing_entropy"] = {domain: round(shares["entropy"], 4) for domain, shares in routing.items()}
    return metrics


def _rounded(values: Iterable[float]) -> list[float]:
    return [round(value, 4) for value in values]


def load_model(ctx: NodeContext):
    """The evaluated model in `evals.precision` (weights, hence the KV cache too), spread over the visible GPUs
    when there are any, with the project-wide `training.experts_implementation`; and its tokenizer."""
    from functools import partial

    from barctl.training.common import DTYPES, placement
    from barctl.training.common import load_model as load_checkpoint

    kernel = (ctx.recipe.document.data.get("training") or {}).get("experts_implementation")
    load = partial(load_checkpoint, dtype=DTYPES[ctx.config.get("precision", "fp32")],
                   experts_implementation=kernel, device_map=placement())
    if ctx.config["model"] in ("merged", "btx"):  # inputs: the merge, then the router
        from barctl.model.router_weights import load_router
        from barctl.runners.router import ROUTER_FILE

        model, tokenizer = load(ctx.inputs[ctx.node.inputs[0]])
        load_router(model, ctx.inputs[ctx.node.inputs[1]] / ROUTER_FILE)
    else:
        model, tokenizer = load(model_dir(ctx, ctx.node.inputs[0]))
    return model.eval(), tokenizer


def eval_rows(ctx: NodeContext, spec: dict[str, Any]):
    """The domain's dataset in canonical columns, cut to its `limit`."""
    from barctl.data.load import load_dataset_spec

    rows = load_dataset_spec(ctx.recipe.dataset_spec(spec["dataset"]))
    if spec["limit"] is not None:
        rows = rows.select(range(min(spec["limit"], len(rows))))
    return rows
