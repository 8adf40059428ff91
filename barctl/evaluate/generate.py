"""Greedy generation from prompts in TRL's convention (messages get the chat template)."""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from barctl.evaluate.batching import chunks, pad_token_id, padded_batch

Prompt = str | list[dict]


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """The text the model sees for `prompt`: a string as is, messages through the chat template."""
    if isinstance(prompt, str):
        return prompt
    return cast(str, tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False))


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """The token ids the model sees for `prompt`, tokenized as TRL's GRPO trainer does."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    return chat_ids(tokenizer, prompt, add_generation_prompt=True)


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool = False
             ) -> list[int]:
    """The token ids of a conversation through the chat template."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                            return_dict=True)
    return cast(list[int], cast(dict[str, Any], encoded)["input_ids"])


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], *,
             max_new_tokens: int, batch_size: int, max_length: int) -> list[str]:
    """The greedy completion of each prompt (new tokens only, special tokens dropped), in the order given.

    A prompt longer than `max_length` tokens keeps its last `max_length` tokens. Prompts are
    batched by length, so a batch pads little; a prompt's completion does not depend on the
    batch it runs in. A batch stops as soon as each of its rows has ended its turn.
    """
    model.eval()
    pad_id = pad_token_id(tokenizer)
    encoded = [encode_prompt(tokenizer, prompt)[-max_length:] for prompt in prompts]
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    completions: list[str] = [""] * len(encoded)
    with torch.inference_mode():
        for batch in chunks(by_length, batch_size):
            # left padding: every row's new tokens then start at the same column
            input_ids, mask = padded_batch([encoded[i] for i in batch], pad_id, "left", model.device)
            output = model.generate(  # type: ignore[operator]  # mypy reads `generate` as a module attribute
                                    input_ids=input_ids, attention_mask=mask, do_sample=False,
                                    max_new_tokens=max_new_tokens, pad_token_id=pad_id)
            texts = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
            for index, text in zip(batch, texts):
                completions[index] = text
    return completions
