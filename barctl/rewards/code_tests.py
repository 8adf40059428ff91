"""Code reward: the completion's program passes the example's tests in the sandbox.

The program is the last ```` ```python ```` (or ```` ```py ````, or untagged) fence of
the reply, else the whole reply. ``tests`` is Python source (a string, or a list of
lines such as MBPP asserts) run after it, in the same namespace. With an
``entry_point`` column the tests are HumanEval style: they define
``check(candidate)``, which is then called with the entry point. Completions run in
parallel, one per CPU core.

A completion passes only when the tests ran to their end: a harness (``HARNESS``)
runs the code, then the tests, then writes a random nonce to standard output and
exits 0 itself; the reward is 1.0 when the sandboxed run exits 0 within its limits
(``sandbox.run_python``) AND printed that nonce. So ``sys.exit(0)``, ``os._exit(0)``,
``raise SystemExit``, exit hooks (``atexit``, ``sys.excepthook``), a killed or timed
out process, and tests that raise all fail: none of them reaches the nonce.

How the nonce stays out of the model code's reach. The sandbox takes one script, so
the nonce travels in it, as a comment (comments are not compiled into any code
object). Before the model code runs, the harness reads the nonce from its own file
and overwrites it in place with zeros; it compiles the code and the tests from
string literals, and keeps private references to ``exec``, ``os.write``,
``os._exit`` and a duplicate of file descriptor 1, so patching ``builtins``, ``os``, ``print`` or
``sys.stdout`` changes nothing it relies on. Limit: the nonce is then held in the
same interpreter as the model code, which can only find it by deliberately scanning
the interpreter (frames, the garbage collector, ``/proc/self/mem``); objects that
claim to equal anything (``__eq__`` returning True) are not detected, nor a tracing hook
that skips test lines and then removes itself (one still installed when the tests end
fails the run). These are deliberate attacks, not accidents a
policy stumbles on by exiting early; the sandbox still contains them.
"""

from __future__ import annotations

import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from barctl.rewards.completion import completion_text
from barctl.rewards.sandbox import SandboxResult, run_python

_FENCE = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
NONCE_MARK = "# barctl-nonce: "

# {nonce_line} is the first line, so the harness finds it at a fixed place.
HARNESS = '''{nonce_line}
def _barctl_harness(solution, tests):
    import builtins, contextlib, os, sys
    with open(__file__, "r+b") as script:
        first = script.readline()
        nonce = first[len({mark!r}):].strip()
        script.seek(0)
        script.write(first[:len({mark!r})] + b"0" * len(nonce))
    out, write, run, exit_now = os.dup(1), os.write, exec, os._exit
    streams, suppress = (sys.stdout, sys.stderr), contextlib.suppress
    hooks = (sys.gettrace, sys.getprofile)
    namespace = {{"__name__": "__main__", "__builtins__": builtins}}
    solution = compile(solution, "solution.py", "exec")
    tests = compile(tests, "tests.py", "exec")
    run(solution, namespace)
    run(tests, namespace)
    if any(hook() is not None for hook in hooks):  # a tracer can jump over the tests' lines
        exit_now(1)
    for stream in streams:  # the program's own output, for whoever reads it; not part of the verdict
        with suppress(ValueError, OSError):
            stream.flush()
    write(out, b"\\n" + nonce + b"\\n")
    exit_now(0)


_barctl_harness({solution!r}, {tests!r})
'''


def extract_code(text: str) -> str:
    """The last Python fence of a reply, or the whole reply when it has none."""
    fences = _FENCE.findall(text)
    return fences[-1] if fences else text


def test_source(tests: str | list[str], entry_point: str | None = None) -> str:
    """The tests as one script, calling ``check(entry_point)`` for HumanEval-style tests."""
    source = tests if isinstance(tests, str) else "\n".join(tests)
    if entry_point:
        source += f"\n\ncheck({entry_point})\n"
    return source


def build_program(code: str, tests: str | list[str], entry_point: str | None, nonce: str) -> str:
    """The harness script that runs ``code``, then its tests, then prints ``nonce``."""
    return HARNESS.format(nonce_line=NONCE_MARK + nonce, mark=NONCE_MARK.encode(), solution=code,
                          tests=test_source(tests, entry_point))


def passed(result: SandboxResult, nonce: str) -> bool:
    """Whether a run exited 0 within its limits after the harness printed the nonce."""
    return result.ok and nonce in result.stdout.splitlines()


def run_tests(code: str, tests: str | list[str], entry_point: str | None = None) -> bool:
    """Whether ``code`` passes ``tests`` in the sandbox, run to their end."""
    nonce = secrets.token_hex(16)
    return passed(run_python(build_program(code, tests, entry_point, nonce)), nonce)


def code_tests(
    prompts: list, completions: list, tests: list, entry_point: list | None = None, **kwargs: Any
) -> list[float]:
    """1.0 for each completion whose code passes its ``tests``, else 0.0."""
    entry_points = entry_point if entry_point is not None else [None] * len(completions)
    jobs = [(extract_code(completion_text(completion)), test, entry)
            for completion, test, entry in zip(completions, tests, entry_points, strict=True)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return [1.0 if ok else 0.0 for ok in pool.map(lambda job: run_tests(*job), jobs)]
