"""The baselines a manifest may build next to BAR (`baselines: [btx, retrain]`), defined from the recipe alone.

`btx` (Branch-Train-MiX, Sukhbaatar et al. 2024, as BAR's paper builds it): every expert's
stages run on a dense copy of the anchor with every parameter trainable (nodes
`btx.experts.<name>.<stage>`); `btx.merge` upcycles the dense experts' FFNs into one MoE
(slot 0 the anchor's FFN, slot i expert i's, as BAR's merge) and averages their other
parameters uniformly over the dense experts (BTX averages the experts, not the seed model);
`btx.router` initialises and trains its router exactly as `router` does BAR's.

`retrain` (BAR's "monolithic retraining"): one dense model, every parameter trainable,
trained through one stage per stage kind that some expert has, in BAR's order (midtrain,
sft, dpo, grpo): nodes `retrain.<kind>`. A retrain stage's rows are those of every expert's
stages of that kind, each mix drawn exactly as the expert's stage draws it, concatenated
and shuffled with the stage's seed: the retrained model sees each expert's rows as often as
that expert did. Its training settings are those of the first such stage (manifest order),
except `max_steps`, the sum of theirs (when every one sets it; otherwise none, so that
epochs run over the union), and `max_length`, the largest of theirs. GRPO stages mixed into
one must share their rewards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from barctl.errors import Issue, UnsupportedModel
from barctl.manifest.recipe import STAGE_KINDS, Recipe, Stage
from barctl.manifest.sections import Mix, Reward
from barctl.model.families import family_for

BASELINES = ("btx", "retrain")
ALL_TRAINABLE = ("all",)


@dataclass(frozen=True)
class RetrainStage:
    kind: str
    parts: tuple[tuple[str, Stage], ...]  # (expert name, its stage of this kind), manifest order

    @property
    def node_id(self) -> str:
        return f"retrain.{self.kind}"

    def mixes(self) -> list[Mix]:
        return [stage.mix for _, stage in self.parts if stage.mix is not None]

    def training(self) -> dict[str, Any]:
        trainings = [stage.training for _, stage in self.parts]
        training = dict(trainings[0])
        steps = [t.get("max_steps") for t in trainings]
        training["max_steps"] = sum(steps) if all(steps) else None
        lengths = [t["max_length"] for t in trainings if t.get("max_length") is not None]
        if lengths:
            training["max_length"] = max(lengths)
        return {k: v for k, v in training.items() if v is not None}

    def rewards(self) -> list[Reward]:
        return list(self.parts[0][1].rewards)


def btx_stage_id(expert: str, stage: str) -> str:
    return f"btx.experts.{expert}.{stage}"


def retrain_stages(recipe: Recipe) -> list[RetrainStage]:
    """One stage per stage kind some expert has, in BAR's order, with every expert's stages of that kind."""
    stages = []
    for kind in STAGE_KINDS:
        parts = tuple((expert.name, stage) for expert in recipe.experts for stage in expert.stages
                      if stage.kind == kind)
        if parts:
            stages.append(RetrainStage(kind, parts))
    return stages


def baseline_issues(recipe: Recipe, anchor_config: dict[str, Any]) -> list[Issue]:
    """Baselines this recipe cannot build, located at their entry in `baselines`."""
    issues = []
    for index, name in enumerate(recipe.baselines):
        where = ("baselines", index)
        if name == "btx":
            try:
                family_for(anchor_config, recipe.output["architecture"])
            except UnsupportedModel as error:
                issues.append(recipe.issue(where, f"btx upcycles the dense experts' FFNs into a MoE: {error}"))
        elif name == "retrain":
            for stage in retrain_stages(recipe):
                rewards = {json.dumps(s.rewards, sort_keys=True) for _, s in stage.parts}
                if len(rewards) > 1:
                    experts = ", ".join(e for e, _ in stage.parts)
                    issues.append(recipe.issue(where,
                        f"retrain mixes the {stage.kind} stages of {experts} into one, but their rewards differ: "
                        "one trainer scores every row with one set of rewards (give them the same rewards, "
                        "or drop retrain)"))
    return issues

