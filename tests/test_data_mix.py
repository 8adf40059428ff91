"""Mixes: rows per dataset, deterministic draws, repeats, `source` and column alignment."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datasets import Dataset

from barctl.data.load import load_dataset_spec
from barctl.data.mix import build_mix, mix_plan
from barctl.errors import BarctlError


def texts(name: str, rows: int) -> Dataset:
    return Dataset.from_dict({"text": [f"{name}-{i}" for i in range(rows)]})


def mix(*sources: dict, size: int | None = None, seed: int = 0) -> dict:
    return {"sources": list(sources), "size": size, "seed": seed}


def count(name: str, rows: int) -> dict:
    return {"dataset": name, "count": rows}


def weight(name: str, share: float) -> dict:
    return {"dataset": name, "weight": share}


def fraction(name: str, share: float) -> dict:
    return {"dataset": name, "fraction": share}


# mix_plan


def test_plan_counts_and_fractions_are_exact():
    plan = mix_plan(mix(count("a", 7), fraction("b", 0.29)), {"a": 50, "b": 100})
    assert plan == {"a": 7, "b": 29}


def test_plan_weights_share_what_is_left_of_size_exactly():
    plan = mix_plan(
        mix(count("a", 100), weight("b", 1), weight("c", 2), size=1000),
        {"a": 500, "b": 500, "c": 500},
    )
    assert plan == {"a": 100, "b": 300, "c": 600}
    thirds = mix_plan(mix(*(weight(n, 1) for n in "abc"), size=100), {"a": 9, "b": 9, "c": 9})
    assert sorted(thirds.values()) == [33, 33, 34] and sum(thirds.values()) == 100


def test_plan_sums_a_dataset_named_twice():
    plan = mix_plan(mix(count("a", 3), fraction("a", 0.5)), {"a": 10})
    assert plan == {"a": 8}


@pytest.mark.parametrize(
    ("the_mix", "message"),
    [
        (mix(weight("a", 1)), "needs a size"),
        (mix(count("a", 30), weight("b", 1), size=20), "30 rows, more than its size 20"),
        (mix(count("a", 5), size=20), "size is 20 but counts and fractions take 5 rows"),
        (mix(count("nope", 5)), "mix source 'nope': no such dataset"),
        (mix(count("empty", 5)), "mix source 'empty': the dataset is empty"),
    ],
)
def test_plan_errors(the_mix, message):
    with pytest.raises(BarctlError, match=message):
        mix_plan(the_mix, {"a": 10, "b": 10, "empty": 0})


# build_mix


def test_weights_give_their_proportions():
    sets = {"a": texts("a", 1000), "b": texts("b", 1000)}
    result = build_mix(mix(weight("a", 3), weight("b", 1), size=400), sets)
    assert Counter(result["source"]) == {"a": 300, "b": 100}
    assert len(set(result["text"])) == 400  # no repeats while rows last
    assert all(text.startswith(source) for text, source in zip(result["text"], result["source"]))


def test_counts_and_fractions_are_exact():
    sets = {"a": texts("a", 50), "b": texts("b", 40)}
    result = build_mix(mix(count("a", 12), fraction("b", 0.25)), sets)
    assert Counter(result["source"]) == {"a": 12, "b": 10}


def test_same_seed_same_rows_different_seed_different_rows():
    sets = {"a": texts("a", 100), "b": texts("b", 100)}
    sources = (weight("a", 1), weight("b", 1))
    first = build_mix(mix(*sources, size=50, seed=1), sets).to_list()
    assert build_mix(mix(*sources, size=50, seed=1), sets).to_list() == first
    other = build_mix(mix(*sources, size=50, seed=2), sets).to_list()
    assert other != first
    assert {r["text"] for r in other} != {r["text"] for r in first}


def test_changing_one_source_keeps_the_rows_of_the_others():
    sets = {"a": texts("a", 100), "b": texts("b", 100)}
    before = build_mix(mix(count("a", 10), count("b", 10)), sets)
    after = build_mix(mix(count("a", 10), count("b", 30)), sets)
    a_rows = [{r["text"] for r in rows if r["source"] == "a"} for rows in (before, after)]
    b_rows = [{r["text"] for r in rows if r["source"] == "b"} for rows in (before, after)]
    assert a_rows[0] == a_rows[1]
    assert b_rows[0] < b_rows[1]


def test_asking_for_more_rows_than_exist_repeats_them_evenly():
    result = build_mix(mix(weight("a", 1), size=25), {"a": texts("a", 10)})
    repeats = Counter(result["text"])
    assert len(result) == 25 and len(repeats) == 10
    assert sorted(set(repeats.values())) == [2, 3]


def test_result_is_shuffled():
    sets = {"a": texts("a", 100), "b": texts("b", 100)}
    sources = list(build_mix(mix(count("a", 50), count("b", 50)), sets)["source"])
    assert sources != sorted(sources) and sources != sorted(sources, reverse=True)


def test_only_canonical_columns_and_source(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": chat, "id": i, "source": "web"}) + "\n" for i in range(5)))
    spec = {"name": "chat", "path": str(path), "format": "messages"}
    loaded = load_dataset_spec(spec, cache_dir=tmp_path / "hf-cache")
    result = build_mix(mix(count("chat", 5)), {"chat": loaded})
    assert result.column_names == ["messages", "source"]
    assert set(result["source"]) == {"chat"}


def test_prompt_extras_missing_from_a_dataset_are_null():
    math = Dataset.from_dict({"prompt": ["2+2?"], "answer": ["4"]})
    code = Dataset.from_dict({"prompt": ["write f"], "tests": ["assert f()"]})
    result = build_mix(mix(count("math", 1), count("code", 1)), {"math": math, "code": code})
    assert result.column_names == ["prompt", "answer", "tests", "source"]
    assert sorted(result.to_list(), key=lambda r: r["source"]) == [
        {"prompt": "write f", "answer": None, "tests": "assert f()", "source": "code"},
        {"prompt": "2+2?", "answer": "4", "tests": None, "source": "math"},
    ]


def test_source_names_the_dataset_even_when_the_data_has_one():
    rows = Dataset.from_dict({"prompt": ["p"], "source": ["gsm8k"]})
    assert build_mix(mix(count("math", 1)), {"math": rows}).to_list() == [{"prompt": "p", "source": "math"}]


def test_messages_with_different_keys_combine():
    plain = Dataset.from_list([{"messages": [{"role": "user", "content": "a"}]}])
    named = Dataset.from_list([{"messages": [{"role": "user", "content": "b", "name": "bob"}]}])
    result = build_mix(mix(count("p", 1), count("n", 1)), {"p": plain, "n": named})
    by_source = {r["source"]: r["messages"] for r in result}
    assert by_source["n"] == [{"role": "user", "content": "b", "name": "bob"}]
    assert by_source["p"][0]["content"] == "a"


def test_different_formats_do_not_mix():
    chat = Dataset.from_dict({"messages": [[{"role": "user", "content": "a"}]]})
    with pytest.raises(BarctlError, match="datasets of different formats: 'a' have column 'text', 'chat' do not"):
        build_mix(mix(count("a", 1), count("chat", 1)), {"a": texts("a", 3), "chat": chat})


def test_incompatible_types_are_an_error():
    words = Dataset.from_dict({"prompt": ["p"], "answer": ["four"]})
    numbers = Dataset.from_dict({"prompt": ["p"], "answer": [[4]]})
    with pytest.raises(BarctlError, match="column 'answer' has types that do not combine"):
        build_mix(mix(count("w", 1), count("n", 1)), {"w": words, "n": numbers})
