"""Code reward: the completion's program passes the example's tests in the sandbox.

The program is the last ```` ```python ```` (or ```` ```py ````, or untagged) fence of
the reply, else the whole reply. ``tests`` is Python source (a string, or a list of
lines such as MBPP asserts) appended after it. With an ``entry_point`` column the
tests are HumanEval style: they define ``check(candidate)``, which is then called
with the entry point. 1.0 when the whole runs to exit status 0 within the limits of
``sandbox.run_python``, else 0.0. Completions run in parallel, one per CPU core.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from barctl.rewards.sandbox import run_python
from barctl.rewards.text import completion_text

_FENCE = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str:
    """The last Python fence of a reply, or the whole reply when it has none."""
    fences = _FENCE.findall(text)
    return fences[-1] if fences else text


def build_program(code: str, tests: str | list[str], entry_point: str | None = None) -> str:
    """The script that runs: the candidate code, then its tests."""
    test_source = tests if isinstance(tests, str) else "\n".join(tests)
    program = f"{code}\n\n{test_source}\n"
    if entry_point:
        program += f"\ncheck({entry_point})\n"
    return program


def code_tests(
    prompts: list, completions: list, tests: list, entry_point: list | None = None, **kwargs: Any
) -> list[float]:
    """1.0 for each completion whose code passes its ``tests``, else 0.0."""
    entry_points = entry_point if entry_point is not None else [None] * len(completions)
    programs = [
        build_program(extract_code(completion_text(completion)), test, entry)
        for completion, test, entry in zip(completions, tests, entry_points, strict=True)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return [1.0 if result.ok else 0.0 for result in pool.map(run_python, programs)]
