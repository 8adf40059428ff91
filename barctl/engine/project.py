"""One manifest's world: its recipe, graph, lockfile and store, and planning over them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from barctl.engine.cost import dense_parameters, plan_costs, total
from barctl.engine.graph import Graph, build_graph
from barctl.engine.lock import Lockfile
from barctl.engine.memory import memory_warnings, plan_memory, visible_memory
from barctl.engine.plan import Plan, make_plan
from barctl.engine.store import Store
from barctl.errors import ManifestError
from barctl.manifest.recipe import Recipe, load_recipe

if TYPE_CHECKING:
    from barctl.engine.remote import RemoteStore


@dataclass
class Project:
    recipe: Recipe
    graph: Graph
    lockfile: Lockfile
    store: Store
    warnings: list[str] = field(default_factory=list)  # located, for plan and apply to show

    @classmethod
    def load(cls, manifest: Path) -> Project:
        """Validate the manifest, check its models and data, and key every node."""
        from barctl.engine.input_fingerprints import ProjectFingerprints
        from barctl.engine.preflight import plan_issues, plan_warnings

        recipe = load_recipe(manifest)
        issues = plan_issues(recipe)
        if issues:
            raise ManifestError(recipe.document.filename, issues)
        store = Store(recipe.root)
        graph = build_graph(recipe, ProjectFingerprints(recipe, store.cache))
        store.save_cache()
        manifest_name = recipe.manifest_path.relative_to(recipe.lockfile.parent).as_posix() \
            if recipe.manifest_path.is_relative_to(recipe.lockfile.parent) else str(recipe.manifest_path)
        lockfile = Lockfile.read(recipe.lockfile, manifest_name, recipe.root)
        warnings = [warning.format(recipe.document.filename) for warning in plan_warnings(recipe)]
        return cls(recipe, graph, lockfile, store, warnings)

    @cached_property
    def remote(self) -> RemoteStore | None:
        """The shared store of `store.remote`, if the manifest names one."""
        from barctl.engine.remote import RemoteStore

        url = self.recipe.store_remote
        return RemoteStore(url, self.recipe.root) if url else None

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.recipe.text.encode()).hexdigest()

    def plan(self, targets: list[str] | None = None, replace: list[str] | None = None) -> Plan:
        plan = make_plan(
            self.graph,
            self.lockfile.entries,
            self.store.problem_with,
            manifest=str(self.recipe.manifest_path),
            manifest_digest=self.manifest_digest,
            lock_digest=self.lockfile.digest(),
            targets=targets,
            replace=replace,
        )
        counts = self.trainable_counts()
        plan.trainable = {a.node_id: counts[a.node_id] for a in plan.to_run if a.node_id in counts}
        plan.costs = plan_costs(self.recipe, [a.node_id for a in plan.to_run])
        plan.cost_total = total(plan.costs)
        visible = visible_memory()
        plan.memory = plan_memory(self.recipe, [a.node_id for a in plan.to_run], visible)
        self.warnings += [w for w in memory_warnings(self.recipe, plan.memory, visible) if w not in self.warnings]
        self.store.save_cache()
        return plan

    def trainable_counts(self) -> dict[str, int]:
        """Trainable parameters of every stage node (and of router training), the baselines' too, from the anchor's
        config alone."""
        from barctl.engine.graph import resolved_top_k
        from barctl.manifest.recipe import STAGE_KINDS
        from barctl.model.families import family_for
        from barctl.model.freezing import trainable_parameter_count
        from barctl.model.source import describe

        recipe = self.recipe
        dense = describe(recipe.resolve_source(recipe.anchor))
        family = family_for(dense, recipe.output["architecture"])
        branched = family.moe_config(dense, num_experts=2, top_k=2)
        counts = {node.id: dense_parameters(branched)[0] if node.config.get("dense")
                  else trainable_parameter_count(branched, node.config["trainable"])
                  for node in self.graph if node.kind in STAGE_KINDS}
        if recipe.routing["train"] is not None:
            merged = family.moe_config(dense, num_experts=len(recipe.experts) + 1, top_k=resolved_top_k(recipe))
            counts["router"] = trainable_parameter_count(merged, ["router"], freeze_anchor_row=False)
            if "btx.router" in self.graph:
                counts["btx.router"] = counts["router"]
        return counts
