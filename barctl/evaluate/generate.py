"""Greedy generation from prompts in TRL's convention (messages get the chat template)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from barctl.evaluate.batching import chunks, pad_token_id, padded_batch

Prompt = str | list[dict]


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """The text the model sees for `prompt`: a string as is, messages through the chat template."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """The token ids the model sees for `prompt`, tokenized as TRL's GRPO trainer does."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], *,
             max_new_tokens: int, batch_size: int, max_length: int) -> list[str]:
    """The greedy completion of each prompt (new tokens only, special tokens dropped).

    A prompt longer than `max_length` tokens keeps its last `max_length` tokens. A
    prompt's completion does not depend on the batch it runs in.
    """
    model.eval()
    pad_id = pad_token_id(tokenizer)
    completions: list[str] = []
    with torch.inference_mode():
        for batch in chunks(prompts, batch_size):
            ids = [encode_prompt(tokenizer, prompt)[-max_length:] for prompt in batch]
            # left padding: every row's new tokens then start at the same column
            input_ids, mask = padded_batch(ids, pad_id, "left", model.device)
            output = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                    max_new_tokens=max_new_tokens, pad_token_id=pad_id)
            completions += tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
    return completions
