"""`export`: the final Hugging Face checkpoint, with a model card, then a smoke test."""

from __future__ import annotations

import hashlib
from typing import Any

from barctl.engine.graph import canonical_json
from barctl.evaluate.results import AVERAGE, eval_intervals, eval_scores, routing_report
from barctl.runners import NodeContext
from barctl.runners.router import ROUTER_FILE


def run(ctx: NodeContext) -> dict[str, Any]:
    from barctl.model.hf_export import export, smoke_test

    dtype = ctx.config["dtype"]
    with ctx.steps("writing", "tensors") as steps:
        export(
            ctx.inputs["merge"],
            ctx.out,
            router_file=ctx.inputs["router"] / ROUTER_FILE,
            dtype=None if dtype == "auto" else dtype,
            max_shard_bytes=ctx.recipe.max_shard_bytes,
            model_card=model_card(ctx),
            top_k=None,
            track=steps.track,
        )
    if not ctx.config["smoke_test"]:
        return {}
    ctx.say("smoke test: reloading with stock transformers and generating")
    result = smoke_test(ctx.out)
    return {"smoke_test": result}


def model_card(ctx: NodeContext) -> str:
    from barctl.model.card import front_matter
    from barctl.model.source import card_facts

    recipe = ctx.recipe
    lock_digest = "sha256:" + hashlib.sha256(canonical_json(ctx.upstream).encode()).hexdigest()
    experts = ", ".join(e.name for e in recipe.experts)
    return front_matter(card_facts(recipe.resolve_source(recipe.anchor))) + f"""# {recipe.name}

A Mixture-of-Experts built with barctl by Branch-Adapt-Route
(BAR): slot 0 of every layer is the anchor's FFN, the other slots are the domain
experts {experts}, in that order.

Load it with stock transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{recipe.output['dir']}")
```

- Lock digest of the built nodes: `{lock_digest}`
- Export node key: `{ctx.node.key}`

{evaluation_section(ctx)}## Manifest

```yaml
{recipe.text.rstrip()}
```
"""


def evaluation_section(ctx: NodeContext) -> str:
    """The evaluation table (models as rows, domains and their average as columns, scores with 95% intervals)
    and the routing report."""
    from barctl.render import routing_cells, routing_title, score_cell

    scores = eval_scores(ctx.upstream, [e.name for e in ctx.recipe.experts])
    if not scores:
        return ""
    intervals = eval_intervals(ctx.upstream)
    domains = [*ctx.recipe.evals["domains"], AVERAGE]
    lines = ["## Evaluation", "", "Scores (higher is better) with their 95% intervals.", "",
             "| model | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    lines += [f"| {model} | " + " | ".join(score_cell(row[d], intervals[model].get(d)) if d in row else "-"
                                          for d in domains) + " |"
              for model, row in scores.items()]
    shares = routing_report(ctx.upstream)
    if shares:
        top1, entropy = routing_report(ctx.upstream, "routing_top1"), routing_report(ctx.upstream, "routing_entropy")
        slots = ["anchor", *(e.name for e in ctx.recipe.experts)]
        lines += ["", routing_title(len(slots)) + ", on each domain's evaluation data:", "",
                  "| domain | " + " | ".join(slots) + " | entropy |", "|---" * (len(slots) + 2) + "|"]
        lines += [f"| {domain} | " + " | ".join(routing_cells(row, top1.get(domain)))
                  + f" | {entropy[domain]:.3f} |" for domain, row in shares.items()]
    return "\n".join(lines) + "\n\n"
