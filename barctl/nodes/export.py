"""`export`: the final Hugging Face checkpoint, with a model card, then a smoke test."""

from __future__ import annotations

import hashlib
from typing import Any

from barctl.graph import canonical_json
from barctl.nodes import NodeContext
from barctl.nodes.router import ROUTER_FILE
from barctl.results import AVERAGE, eval_scores, routing_shares


def run(ctx: NodeContext) -> dict[str, Any]:
    from barctl.model.export import export, smoke_test

    dtype = ctx.config["dtype"]
    export(
        ctx.inputs["merge"],
        ctx.out,
        router_file=ctx.inputs["router"] / ROUTER_FILE,
        dtype=None if dtype == "auto" else dtype,
        max_shard_bytes=ctx.recipe.max_shard_bytes,
        model_card=model_card(ctx),
        top_k=None,
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
    """The evaluation table (models as rows, domains and their average as columns) and routing shares."""
    scores = eval_scores(ctx.upstream)
    if not scores:
        return ""
    domains = [*ctx.recipe.evals["domains"], AVERAGE]
    lines = ["## Evaluation", "", "| model | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    lines += [f"| {model} | " + " | ".join(f"{row[d]:.3f}" for d in domains) + " |" for model, row in scores.items()]
    shares = routing_shares(ctx.upstream)
    if shares:
        slots = ["anchor", *(e.name for e in ctx.recipe.experts)]
        lines += ["", "Share of routing weight per expert on each domain's evaluation data (merged model, "
                  "mean over layers):", "", "| domain | " + " | ".join(slots) + " |", "|---" * (len(slots) + 1) + "|"]
        lines += [f"| {domain} | " + " | ".join(f"{s:.1%}" for s in row) + " |" for domain, row in shares.items()]
    return "\n".join(lines) + "\n\n"
