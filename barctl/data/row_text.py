"""A dataset row of any barctl format as the text a model reads (chat template applied to conversations)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def row_text(tokenizer: PreTrainedTokenizerBase, row: dict[str, Any]) -> str:
    """The text of a row of any barctl format, chat template applied to conversations."""
    if row.get("text") is not None:
        return row["text"]
    if row.get("messages") is not None:
        return chat_text(tokenizer, row["messages"])
    prompt = row["prompt"]
    answer = next((row[c] for c in ("completion", "chosen") if row.get(c) is not None), None)
    if isinstance(prompt, str):
        return prompt + (answer if isinstance(answer, str) else "")
    return chat_text(tokenizer, prompt + (answer or []), add_generation_prompt=answer is None)


def chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not tokenizer.chat_template:
        return "\n".join(str(m["content"]) for m in messages)
    return cast(str, tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=add_generation_prompt))
