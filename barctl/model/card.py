"""The Hugging Face metadata (YAML front matter) of the exported model's card."""

from __future__ import annotations

TAGS = ["moe", "bar", "barctl"]


def front_matter(anchor_facts: dict[str, str]) -> str:
    """The card's front matter: `base_model` and `license` from the anchor where known, tags, pipeline, library."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=anchor_facts.get("base_model"),
        license=anchor_facts.get("license"),
        tags=TAGS,
        pipeline_tag="text-generation",
        library_name="transformers",
    )
    return f"---\n{data.to_yaml()}\n---\n"
