"""`export`: the final Hugging Face checkpoint, with a model card, then a smoke test."""

from __future__ import annotations

import hashlib
from typing import Any

from barctl.graph import canonical_json
from barctl.nodes import NodeContext
from barctl.nodes.router import ROUTER_FILE


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
    recipe = ctx.recipe
    lock_digest = "sha256:" + hashlib.sha256(canonical_json(ctx.upstream).encode()).hexdigest()
    experts = ", ".join(e.name for e in recipe.experts)
    return f"""---
library_name: transformers
tags: [barctl, mixture-of-experts, branch-adapt-route]
---
# {recipe.name}

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

## Manifest

```yaml
{recipe.text.rstrip()}
```
"""
