"""Values the schema lets through but no run can use: each refused by validate and plan with its
YAML path and line, before anything is built."""

from __future__ import annotations

import json

import pytest

from tests.projects import barctl, make_project, tiny_manifest

SFT = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 2}]}}
GRPO = {"kind": "grpo", "mix": {"sources": [{"dataset": "prompts", "count": 2}]}, "rewards": [{"name": "math_answer"}]}
DATASETS = {"chat": {"path": "chat.jsonl", "format": "messages"}, "prompts": {"path": "prompts.jsonl", "format": "prompt"}}


def _stage(stage: dict, **training) -> dict:
    return tiny_manifest({"math": {"stages": [{**stage, "training": training}]}}, datasets=DATASETS)


def _anchor_config(**config) -> dict:
    manifest = tiny_manifest()
    manifest["base"]["anchor"] = json.loads(json.dumps(manifest["base"]["anchor"]))
    manifest["base"]["anchor"]["random"]["config"].update(config)
    return manifest


def _shard(size: str) -> dict:
    manifest = tiny_manifest()
    manifest["output"]["max_shard_size"] = size
    return manifest


CASES = [
    ("nan learning rate", _stage(SFT, learning_rate=float("nan")), "learning_rate", "learning_rate: nan is not a usable number"),
    ("infinite learning rate", _stage(SFT, learning_rate=float("inf")), "learning_rate", "inf is not a usable number"),
    ("seed beyond int64", tiny_manifest(seed=2**64), "seed: 1", "does not fit in a 64-bit integer"),
    ("seed beyond numpy", tiny_manifest(seed=2**40), "seed: 1", "a seed must be below 2**32"),
    ("steps beyond int64", _stage(SFT, max_steps=10**20), "max_steps", "does not fit in a 64-bit integer"),
    ("zero shard size", _shard("0GB"), "max_shard_size", "a shard size of 0 holds no tensor"),
    ("warmup ratio 1", _stage(SFT, warmup_ratio=1), "warmup_ratio", "warmup_ratio"),
    ("heads do not divide hidden", _anchor_config(num_attention_heads=5), "num_attention_heads",
     "5 attention heads do not divide hidden_size 32"),
    ("kv heads do not divide heads", _anchor_config(num_key_value_heads=3), "num_key_value_heads",
     "3 key/value heads do not divide the 4 attention heads"),
    ("zero layers", _anchor_config(num_hidden_layers=0), "num_hidden_layers", "expected a positive integer, got 0"),
    ("non-numeric hidden size", _anchor_config(hidden_size="big"), "hidden_size",
     "expected a positive integer, got 'big'"),
    ("grpo batch", _stage(GRPO, batch_size=3), "batch_size",
     "GRPO's generation batch (3: batch_size 3 x 1 processes x 1 steps) must be divisible by num_generations (4)"),
    ("grpo generations", _stage(GRPO, batch_size=4, trl={"num_generations": 3}), "num_generations",
     "must be divisible by num_generations (3)"),
    ("launcher config missing", tiny_manifest({"math": {"stages": [{**SFT, "launcher": {
        "kind": "accelerate", "config_file": "zero2.yaml"}}]}}, datasets=DATASETS), "config_file",
     "launcher.config_file: no such file: zero2.yaml"),
    ("expert name with a newline", tiny_manifest({"math\n": {}}), "math", "holds a line break or control character"),
]


@pytest.mark.parametrize("name,manifest,line_text,expected", CASES, ids=[c[0] for c in CASES])
def test_unusable_values_are_refused_at_their_line(tmp_path, tokenizer_dir, name, manifest, line_text, expected):
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    path = make_project(tmp_path, tokenizer_dir, manifest)
    rows = path.read_text().splitlines()
    line = next(i for i, row in enumerate(rows, 1) if line_text in row)
    for command in ("validate", "plan"):
        result = barctl(command, path)
        assert result.exit_code == 1, result.output
        assert expected in result.output, result.output
        assert f"{path}:{line}:" in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "barctl.lock").exists()


def test_a_random_vocabulary_smaller_than_its_tokenizer_is_refused_at_plan(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir, _anchor_config(vocab_size=100))
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if row.strip() == "anchor:")
    result = barctl("plan", path)
    assert result.exit_code == 1
    assert f"{path}:{line + 1}:" in result.output  # base.anchor's value starts on the next line
    assert "random.config.vocab_size 100 is smaller than its tokenizer (300 tokens)" in result.output


def test_plan_warns_at_their_lines_and_still_plans(tmp_path, tokenizer_dir):
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "yo"}]}) + "\n" for i in range(3)))
    stage = {"kind": "sft", "mix": {"sources": [{"dataset": "chat", "count": 10}]}}
    evals = {"generation": {"max_new_tokens": 64, "max_length": 100},
             "domains": {"general": {"dataset": "chat", "metric": "loss"}}}
    manifest = tiny_manifest({"math": {"stages": [stage]}}, datasets={"chat": DATASETS["chat"]}, evals=evals)
    path = make_project(tmp_path, tokenizer_dir, manifest)
    rows = path.read_text().splitlines()

    def line(text: str, after: int = 0) -> int:
        return next(i for i, row in enumerate(rows, 1) if i > after and text in row)

    result = barctl("plan", path)
    assert result.exit_code == 0, result.output
    assert f"{path}:{line('count: 10')}:" in result.output
    assert "count 10 is above the 3 rows of 'chat': each row repeats about 3.3 times" in result.output
    assert f"{path}:{line('dataset: chat', line('evals:'))}:" in result.output
    assert "'chat' is also training data (experts.math.sft)" in result.output
    assert "prompts of up to 100 tokens plus max_new_tokens 64 exceed the anchor's context of 128 tokens" \
        in result.output
    assert len(json.loads(barctl("plan", path, "--json").output)["warnings"]) == 3
