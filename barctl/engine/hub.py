"""Hub revisions resolved to commits at plan time, so that a branch that moved shows as a
rebuild (its commit is part of the node's key and the lockfile) and apply builds exactly
the commit the plan saw.

The hub answers when it can be reached; offline (HF_HUB_OFFLINE=1, or no network) the
local cache's refs do, as huggingface_hub itself resolves them offline.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from barctl.manifest.recipe import Recipe

S = TypeVar("S", bound=Mapping[str, Any])  # a model source or a dataset spec

COMMIT = re.compile(r"[0-9a-f]{40}")
TIMEOUT_S = 5.0


def resolved_commit(repo: str, revision: str | None, repo_type: str = "model") -> str | None:
    """The commit `revision` (a branch or tag; default main) points at now; None when neither
    the hub nor the local cache can say (then the key keeps the revision's name)."""
    revision = revision or "main"
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, constants

    if not constants.HF_HUB_OFFLINE:
        api = HfApi()
        info = api.model_info if repo_type == "model" else api.dataset_info
        try:
            sha = info(repo, revision=revision, timeout=TIMEOUT_S).sha
            if sha and COMMIT.fullmatch(sha):
                return sha
        except Exception:  # unreachable, unknown or private: the cache may still know the branch
            pass
    return _cached_ref(Path(constants.HF_HUB_CACHE), repo, revision, repo_type)


def at_commit(source: S, fingerprint: Any) -> S:
    """A hub source (model or dataset) at the commit its branch resolved to when it was keyed."""
    if isinstance(fingerprint, dict) and "commit" in fingerprint:
        return cast(S, {**source, "revision": fingerprint["commit"]})
    return source


def recipe_at_commits(recipe: Recipe, fingerprints: dict[str, Any]) -> Recipe:
    """The recipe with each hub dataset read at the commit in `fingerprints` (dataset name -> fingerprint)."""
    datasets = {name: at_commit(spec, fingerprints.get(name)) for name, spec in recipe.datasets.items()}
    return dataclasses.replace(recipe, datasets=datasets)


def _cached_ref(cache: Path, repo: str, revision: str, repo_type: str) -> str | None:
    ref = cache / f"{repo_type}s--{repo.replace('/', '--')}" / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return commit if COMMIT.fullmatch(commit) else None
