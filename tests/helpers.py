"""Tiny offline models and tokenizers for tests (plain functions, not fixtures)."""

from __future__ import annotations

from pathlib import Path

TINY_CONFIG: dict = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}

SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 + 30? The answer is 42.",
    "def add(a, b):\n    return a + b",
    "Call the weather tool with city Paris and unit celsius.",
    "I cannot help with that request, but here is something safe.",
    "Mixture of experts models route each token to a few experts.",
]


def make_tokenizer_dir(path: Path) -> Path:
    """Train a byte-level BPE tokenizer (vocab 300, ChatML specials) and save it to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        chat_template=CHATML_TEMPLATE,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return path


def _dense_config(family: str, vocab_size: int, pad: int, bos: int, eos: int, overrides: dict):
    from transformers import LlamaConfig, MistralConfig, Olmo2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "olmo2": Olmo2Config, "qwen3": Qwen3Config}[family]
    kwargs = {
        **TINY_CONFIG,
        "vocab_size": vocab_size,
        "pad_token_id": pad,
        "bos_token_id": bos,
        "eos_token_id": eos,
        **overrides,
    }
    return cls(**kwargs)


def make_dense_checkpoint(
    path: Path,
    family: str = "llama",
    seed: int = 0,
    tokenizer_dir: Path | None = None,
    **config_overrides,
) -> Path:
    """Save a tiny random dense model (safetensors, float32) plus a tokenizer to `path`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tokenizer_dir = make_tokenizer_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if Path(tokenizer_dir) != path:
        tokenizer.save_pretrained(path)
    config = _dense_config(
        family,
        len(tokenizer),
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        config_overrides,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    return path


SAMPLE_IDS = [[5, 17, 42, 99, 123, 200, 7, 250, 31, 64, 3, 77]]


def model_logits(model_dir: Path, input_ids: list[list[int]] = SAMPLE_IDS):
    """Float32 logits of a saved model (stock from_pretrained) for `input_ids`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(input_ids)).logits
