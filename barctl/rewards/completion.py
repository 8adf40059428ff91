"""Completion text as reward functions see it, in either TRL completion format."""

from __future__ import annotations

from typing import Any


def assistant_message(completion: Any) -> dict:
    """The last assistant message of a conversational completion (a plain string becomes one)."""
    if isinstance(completion, str):
        return {"role": "assistant", "content": completion}
    messages = [m for m in completion if m.get("role") == "assistant"] or list(completion)
    return messages[-1] if messages else {"role": "assistant", "content": ""}


def completion_text(completion: Any) -> str:
    """The reply text: the string itself, or the content of the last assistant message."""
    content = assistant_message(completion).get("content") or ""
    if isinstance(content, list):  # multimodal content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def prompt_text(prompt: Any) -> str:
    """The request: the prompt string itself, or the content of the last user message of a conversation."""
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    users = [m for m in prompt if m.get("role") == "user"] or list(prompt)
    return completion_text([{"role": "assistant", "content": users[-1].get("content")}]) if users else ""
