import math

import datasets
import pytest
import torch
import torch.nn.functional as F

import barctl.evaluate.metrics as metrics
from barctl.errors import BarctlError
from barctl.evaluate.generate import generate, render_prompt
from barctl.evaluate.metrics import evaluate_domain
from barctl.evaluate.routing import routing_shares
from tests.helpers import TINY_CONFIG

CHAT = [{"role": "user", "content": "What is 12 + 30?"}]
TEXTS = ["The quick brown fox.", "What is 12 + 30? The answer is 42.", "Mixture of experts models route each token."]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def tiny_model(tokenizer, family="llama", **overrides):
    from transformers import (
        FlexOlmoConfig,
        FlexOlmoForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mixtral": (MixtralConfig, MixtralForCausalLM),
        "flex_olmo": (FlexOlmoConfig, FlexOlmoForCausalLM),
        "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
    }[family]
    config = config_cls(**TINY_CONFIG, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
    torch.manual_seed(0)
    return model_cls(config).float().eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


def with_completions(monkeypatch, completions: dict[str, str]):
    """Make evaluate_domain's generation answer each (string) prompt with `completions[prompt]`."""
    monkeypatch.setattr(metrics, "generate", lambda model, tokenizer, prompts, **kw: [completions[p] for p in prompts])


def score(monkeypatch, tokenizer, rows, metric, completions, **kwargs):
    with_completions(monkeypatch, completions)
    return evaluate_domain(None, tokenizer, datasets.Dataset.from_list(rows), metric, **kwargs)


# generative metrics, with completions chosen by the test


def test_math_answer_scores_right_and_wrong_answers(monkeypatch, tokenizer):
    rows = [{"prompt": "12 + 30?", "answer": "42"}, {"prompt": "2 + 2?", "answer": "4"},
            {"prompt": "1/2 + 1/4?", "answer": "\\frac{3}{4}"}, {"prompt": "7 * 6?", "answer": "42"}]
    completions = {"12 + 30?": "The answer is 42.", "2 + 2?": "It is 5.", "1/2 + 1/4?": "\\boxed{0.75}",
                   "7 * 6?": "I do not know"}
    progress = []
    result = score(monkeypatch, tokenizer, rows, "math_answer", completions, batch_size=3, progress=progress.append)
    assert result["score"] == 0.5 and result["n"] == 4 and result["truncated"] == 0
    assert result["rows"] == [1.0, 0.0, 1.0, 0.0]  # every row's reward, in order
    assert result["samples"] == [
        {"prompt": "12 + 30?", "completion": "The answer is 42.", "reward": 1.0},
        {"prompt": "2 + 2?", "completion": "It is 5.", "reward": 0.0},
        {"prompt": "1/2 + 1/4?", "completion": "\\boxed{0.75}", "reward": 1.0},
    ]
    assert progress == [3, 4]  # rows done after each batch


WEATHER = '{"name": "weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
ADD = "```python\ndef add(a, b):\n    return a {} b\n```"


@pytest.mark.parametrize("metric, columns, right, wrong, broken", [
    ("tool_call", {"ground_truth": WEATHER},
     '<tool_call>{"name": "weather", "arguments": {"unit": "celsius", "city": "Paris"}}</tool_call>',
     '<tool_call>{"name": "weather", "arguments": {"city": "Rome", "unit": "celsius"}}</tool_call>',
     "It is sunny in Paris."),
    # HumanEval style: the tests define check(candidate), called with the entry point
    ("code_tests", {"tests": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"},
     ADD.format("+"), ADD.format("-"), "def add(a, b) return"),
])
def test_right_wrong_and_broken_completions(monkeypatch, tokenizer, metric, columns, right, wrong, broken):
    rows = [{"prompt": p, **columns} for p in ("right", "wrong", "broken")]
    result = score(monkeypatch, tokenizer, rows, metric, {"right": right, "wrong": wrong, "broken": broken})
    assert [s["reward"] for s in result["samples"]] == [1.0, 0.0, 0.0]
    assert result["score"] == pytest.approx(1 / 3) and result["n"] == 3


@pytest.mark.parametrize("flags", [(True, True, False, False, False), ("true", "TRUE", "false", "False", "false")])
def test_refusal_rates_over_harmful_and_benign_rows(monkeypatch, tokenizer, flags):
    replies = ["I can't help with that.", "Sure, here is how.", "I'm sorry, but I cannot do that.",
               "Paris is the capital.", "Here you go."]
    rows = [{"prompt": f"p{i}", "harmful": flag} for i, flag in enumerate(flags)]
    result = score(monkeypatch, tokenizer, rows, "refusal", {f"p{i}": r for i, r in enumerate(replies)})
    assert result["harmful"] == 2 and result["benign"] == 3
    assert result["refusal_rate"] == 0.5 and result["over_refusal_rate"] == pytest.approx(1 / 3)
    assert result["score"] == pytest.approx(3 / 5)  # refused harmful 1 + answered benign 2


def test_refusal_rate_is_null_without_rows_of_that_kind(monkeypatch, tokenizer):
    result = score(monkeypatch, tokenizer, [{"prompt": "p", "harmful": False}], "refusal", {"p": "Sure."})
    assert result["refusal_rate"] is None and result["over_refusal_rate"] == 0.0 and result["score"] == 1.0


def test_samples_show_the_chat_rendered_prompt(monkeypatch, tokenizer):
    monkeypatch.setattr(metrics, "generate", lambda model, tokenizer, prompts, **kwargs: ["42"] * len(prompts))
    result = evaluate_domain(None, tokenizer, datasets.Dataset.from_list([{"prompt": CHAT, "answer": "42"}]),
                             "math_answer")
    assert result["samples"][0]["prompt"] == "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    assert result["score"] == 1.0


@pytest.mark.parametrize("metric, rows, needs", [
    ("math_answer", [{"prompt": "p"}], "answer"),
    ("tool_call", [{"text": "t", "ground_truth": "[]"}], "prompt"),
    ("loss", [{"prompt": "p", "answer": "1"}], "messages"),
    ("accuracy", [{"prompt": "p"}], "unknown metric"),
])
def test_wrong_columns_or_metric_are_refused(tokenizer, metric, rows, needs):
    with pytest.raises(BarctlError, match=needs):
        evaluate_domain(None, tokenizer, datasets.Dataset.from_list(rows), metric)


# generation on a real tiny model


def test_generate_is_deterministic_and_independent_of_the_batch(model, tokenizer):
    prompts = ["The quick", "What is 12 + 30? The answer", CHAT, "def add(a, b):\n    return", "Mixture"]
    alone = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=1, max_length=64)
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4, max_length=64)
    assert batched == alone
    assert generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4, max_length=64) == batched
    assert any(alone) and tokenizer.padding_side == "right"


def test_generate_applies_the_chat_template_to_messages(model, tokenizer):
    rendered = render_prompt(tokenizer, CHAT)
    assert rendered == "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tokenizer, "plain text") == "plain text"
    from_chat = generate(model, tokenizer, [CHAT], max_new_tokens=6, batch_size=1, max_length=64)
    from_text = generate(model, tokenizer, [rendered], max_new_tokens=6, batch_size=1, max_length=64)
    from_user = generate(model, tokenizer, ["What is 12 + 30?"], max_new_tokens=6, batch_size=1, max_length=64)
    assert from_chat == from_text != from_user


def test_long_prompts_keep_their_end_and_are_counted(model, tokenizer):
    long = "The quick brown fox jumps over the lazy dog. " * 10
    end = tokenizer.decode(tokenizer(long)["input_ids"][-8:])
    cut = generate(model, tokenizer, [long], max_new_tokens=5, batch_size=1, max_length=8)
    assert cut == generate(model, tokenizer, [end], max_new_tokens=5, batch_size=1, max_length=64)
    rows = [{"prompt": long, "answer": "1"}, {"prompt": "short", "answer": "2"}]
    result = evaluate_domain(model, tokenizer, datasets.Dataset.from_list(rows), "math_answer", max_new_tokens=5,
                             max_length=8)
    assert result["truncated"] == 1 and result["n"] == 2 and result["samples"][0]["completion"] == cut[0]


# loss


def hand_nll(model, ids: list[int], first_target: int) -> tuple[float, int]:
    """Summed cross-entropy of ids[first_target:] given their prefixes, and how many tokens that is."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    targets = torch.tensor(ids[first_target:])
    return F.cross_entropy(logits[first_target - 1 : -1], targets, reduction="sum").item(), len(targets)


def test_loss_of_text_counts_every_token(model, tokenizer):
    rows = [{"text": t} for t in TEXTS]
    result = evaluate_domain(model, tokenizer, datasets.Dataset.from_list(rows), "loss", batch_size=2)
    # as in TRL's SFT, plain text ends with the end-of-sequence token
    sums = [hand_nll(model, tokenizer(t + tokenizer.eos_token)["input_ids"], 1) for t in TEXTS]
    loss = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert result["tokens"] == sum(n for _, n in sums) and result["n"] == 3
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert result["score"] == pytest.approx(math.exp(-loss), rel=1e-5) and 0 < result["score"] < 1
    # per row, independent of the batch: [summed nll, target tokens], which the intervals resample
    assert [tokens for _, tokens in result["rows"]] == [n for _, n in sums]
    assert [nll for nll, _ in result["rows"]] == [pytest.approx(s, rel=1e-5) for s, _ in sums]


def test_loss_rows_keep_their_order_whatever_the_length_batching(model, tokenizer):
    """Rows are batched by length (longest last); each row's result still comes back in its own place."""
    texts = sorted(TEXTS, key=len, reverse=True) + ["A short one."]
    rows = [{"text": t} for t in texts]
    alone = [evaluate_domain(model, tokenizer, datasets.Dataset.from_list([row]), "loss")["rows"][0] for row in rows]
    batched = evaluate_domain(model, tokenizer, datasets.Dataset.from_list(rows), "loss", batch_size=3)["rows"]
    assert [tokens for _, tokens in batched] == [tokens for _, tokens in alone]
    assert [nll for nll, _ in batched] == [pytest.approx(nll, rel=1e-5) for nll, _ in alone]


def test_loss_of_prompt_completion_counts_only_the_completion(model, tokenizer):
    row = {"prompt": "What is 12 + 30?", "completion": " The answer is 42."}
    result = evaluate_domain(model, tokenizer, datasets.Dataset.from_list([row]), "loss")
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    ids = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    nll, tokens = hand_nll(model, ids, len(prompt_ids))
    assert result["tokens"] == tokens == len(ids) - len(prompt_ids)
    assert result["loss"] == pytest.approx(nll / tokens, rel=1e-5)


def test_loss_of_messages_counts_only_the_last_assistant_turn(model, tokenizer):
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    question, answer = CHAT, [{"role": "assistant", "content": "The answer is 42."}]
    rows = {"messages": earlier + question + answer}, {"prompt": earlier + question, "completion": answer}
    conversation, split = (evaluate_domain(model, tokenizer, datasets.Dataset.from_list([row]), "loss") for row in rows)
    assert conversation == split
    answer_tokens = len(tokenizer("The answer is 42.<|im_end|>\n")["input_ids"])
    assert conversation["tokens"] == answer_tokens


def test_loss_truncates_sequences_to_max_length(model, tokenizer):
    result = evaluate_domain(model, tokenizer, datasets.Dataset.from_list([{"text": t} for t in TEXTS]), "loss",
                             max_length=4)
    assert result["truncated"] == 3 and result["tokens"] == 3 * 3


# routing


@pytest.fixture(scope="module", params=["mixtral", "flex_olmo", "qwen3_moe"])
def moe(request, tokenizer):
    experts = {"mixtral": "num_local_experts", "flex_olmo": "num_experts", "qwen3_moe": "num_experts"}[request.param]
    return tiny_model(tokenizer, request.param, **{experts: 3}, num_experts_per_tok=2)


def test_routing_shares_per_layer_and_expert(moe, tokenizer):
    shares = routing_shares(moe, tokenizer, TEXTS, batch_size=2)
    layers, experts = TINY_CONFIG["num_hidden_layers"], 3
    assert len(shares["layers"]) == layers and all(len(row) == experts for row in shares["layers"])
    for row in shares["layers"] + [shares["mean"], shares["top1"]]:
        assert sum(row) == pytest.approx(1, abs=1e-5)
    mean = [sum(column) / layers for column in zip(*shares["layers"])]
    assert shares["mean"] == pytest.approx(mean)
    assert shares["tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)


def test_routing_shares_leave_padding_out(moe, tokenizer):
    batched = routing_shares(moe, tokenizer, TEXTS, batch_size=3)
    alone = routing_shares(moe, tokenizer, TEXTS, batch_size=1)
    assert batched["tokens"] == alone["tokens"] and batched["top1"] == alone["top1"]
    assert batched["layers"] == [pytest.approx(row, abs=1e-6) for row in alone["layers"]]


def router_inputs_and_weights(moe, ids):
    """What each layer's router receives (captured by a hook on the MoE block) and its weight."""
    inputs = []
    handles = [layer.mlp.register_forward_pre_hook(lambda module, args: inputs.append(args[0][0].clone()))
               for layer in moe.model.layers]
    try:
        with torch.no_grad():
            moe(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return inputs, [layer.mlp.gate.weight.detach() for layer in moe.model.layers]


def test_routing_shares_match_a_hand_computation_from_router_inputs_and_weights(moe, tokenizer):
    shares = routing_shares(moe, tokenizer, TEXTS[:1])
    inputs, weights = router_inputs_and_weights(moe, tokenizer(TEXTS[0])["input_ids"])
    probs = torch.stack([(hidden @ weight.T).softmax(dim=-1) for hidden, weight in zip(inputs, weights)])
    assert shares["layers"] == [pytest.approx(row, abs=1e-6) for row in probs.mean(dim=1).tolist()]
    top1 = torch.bincount(probs.argmax(dim=-1).flatten(), minlength=3) / probs[..., 0].numel()
    assert shares["top1"] == pytest.approx(top1.tolist())
    entropy = -(probs * probs.log()).sum(dim=-1).mean()
    assert shares["entropy"] == pytest.approx(entropy.item(), rel=1e-5)
    assert shares["max_entropy"] == pytest.approx(math.log(3)) and 0 < shares["entropy"] < math.log(3)


def test_routing_shares_do_not_depend_on_what_the_router_returns(moe, tokenizer, monkeypatch):
    """transformers 5.0-5.5 return routing probabilities where 5.6+ return logits; the report must not change."""
    expected = routing_shares(moe, tokenizer, TEXTS, batch_size=2)
    router = type(moe.model.layers[0].mlp.gate)
    original = router.forward

    def returns_probabilities(self, hidden_states):
        logits, scores, indices = original(self, hidden_states)
        return logits.float().softmax(dim=-1), scores, indices

    monkeypatch.setattr(router, "forward", returns_probabilities)
    assert routing_shares(moe, tokenizer, TEXTS, batch_size=2) == expected


def test_routing_shares_of_a_dense_model_is_an_error(model, tokenizer):
    with pytest.raises(BarctlError, match="not a Mixture-of-Experts"):
        routing_shares(model, tokenizer, TEXTS)
