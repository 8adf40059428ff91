"""code_tests against programs that try to pass without passing, and honest ones that must pass.

HumanEval and lm-evaluation-harness count a program as passing when its process exits 0;
these cases show why that is not enough: each of the cheats below exits 0 under the old
rule, and each must score 0.0 here, while the unusual but honest programs score 1.0.
"""

from __future__ import annotations

import pytest

from barctl.rewards.code_tests import build_program, code_tests, passed
from barctl.rewards.sandbox import run_python

ADD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
ASSERTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]
CHECK = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n"

CHEATS = {
    "sys.exit(0) before the tests": WRONG + "import sys\nsys.exit(0)\n",
    "os._exit(0) before the tests": WRONG + "import os\nos._exit(0)\n",
    "raise SystemExit": WRONG + "raise SystemExit(0)\n",
    "exit() builtin": WRONG + "exit()\n",
    "atexit hook exits 0 after the failure": WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook exits 0": WRONG + "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
    "thread exits 0 after the failure": WRONG + (
        "import threading, time, os\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), os._exit(0))).start()\n"
    ),
    "prints the scrubbed nonce line of its own script": WRONG + (
        "import __main__\nline = open(__main__.__file__).readline()\n"
        "print(line.split(': ')[1].strip())\nimport os\nos._exit(0)\n"
    ),
    "calls the harness again": WRONG + "import __main__\n__main__._barctl_harness('', '')\n",
    "patches builtins.exec": WRONG + "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "replaces AssertionError": WRONG + "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n",
    "patches os.write and os._exit": WRONG + (
        "import os\nreal = os._exit\nos._exit = lambda code: real(0)\nos.write = lambda fd, b: len(b)\n"
    ),
    "silences stdout and exits through SIGKILL": WRONG + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "loops forever": WRONG + "while True:\n    pass\n",
    "prints a guessed marker": WRONG + "print('0' * 32)\nimport os\nos._exit(0)\n",
    "a tracer that jumps over the tests' lines": WRONG + (
        "import sys\n"
        "def skip(frame, event, arg):\n"
        "    if event == 'line' and frame.f_code.co_filename == 'tests.py':\n"
        "        try:\n"
        "            frame.f_lineno = frame.f_lineno + 1\n"
        "        except ValueError:\n"
        "            pass\n"
        "    return skip\n"
        "sys.settrace(lambda frame, event, arg: skip if frame.f_code.co_filename == 'tests.py' else None)\n"
    ),
    "no code at all": "I am not sure how to write this.",
    "syntax error": "def add(a, b) return a + b\n",
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_cheats_fail_assert_tests(name):
    assert code_tests(["q"], [CHEATS[name]], tests=[ASSERTS]) == [0.0]


def test_cheats_fail_humaneval_tests_too():
    names = sorted(CHEATS)
    defines_check = WRONG + "def check(candidate):\n    pass\n"  # the tests' own check replaces it
    completions = [CHEATS[name] for name in names] + [defines_check]
    scores = code_tests(["q"] * len(completions), completions, tests=[CHECK] * len(completions),
                        entry_point=["add"] * len(completions))
    assert scores == [0.0] * len(completions)


HONEST = {
    "plain": ADD,
    "in a fence after prose": "Here it is:\n```python\n" + ADD + "```\nHope this helps.",
    "prints a lot": ADD + "for i in range(100):\n    print('noise', i)\n",
    "closes sys.stdout": ADD + "import sys\nsys.stdout.close()\n",
    "closes file descriptor 1": ADD + "import os\nos.close(1)\n",
    "replaces print and sys.stdout": ADD + (
        "import builtins, io, sys\nbuiltins.print = lambda *a, **k: None\nsys.stdout = io.StringIO()\n"
    ),
    "runs its own demo under __main__": ADD + "if __name__ == '__main__':\n    print(add(1, 2))\n",
    "future import and tricky quotes": "from __future__ import annotations\n" + ADD + (
        "TEXT = '''a \"quoted\" \\\\ thing''' + \"\\n\"\nMARK = '# barctl-nonce: 0000'\n"
    ),
    "an exit hook that would fail": ADD + "import atexit, os\natexit.register(lambda: os._exit(3))\n",
    "a thread that finishes": ADD + "import threading\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()\n",
    "unicode": ADD + "GREETING = 'héllo ☃'\nprint(GREETING)\n",
}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_programs_pass(name):
    assert code_tests(["q"], [HONEST[name]], tests=[ASSERTS]) == [1.0]


def test_honest_programs_pass_humaneval_tests():
    completions = [HONEST[name] for name in sorted(HONEST)]
    scores = code_tests(["q"] * len(completions), completions, tests=[CHECK] * len(completions),
                        entry_point=["add"] * len(completions))
    assert scores == [1.0] * len(completions)


def test_the_nonce_never_reaches_the_model_code():
    """The program reads its script, environment and arguments: none holds the nonce."""
    spy = ("import os, sys, __main__\n"
           "seen = open(__main__.__file__).read() + repr(dict(os.environ)) + repr(sys.argv)\n"
           "print('SEEN', seen.replace('\\n', ' '))\n")
    nonce = "f" * 32
    result = run_python(build_program(spy, "", None, nonce))
    assert passed(result, nonce)
    seen = next(line for line in result.stdout.splitlines() if line.startswith("SEEN"))
    assert nonce not in seen and "0" * 32 in seen


def test_exit_status_alone_is_not_a_pass():
    nonce = "a" * 32
    result = run_python(build_program(ADD + "import os\nos._exit(0)\n", ASSERTS, None, nonce))
    assert result.ok and not passed(result, nonce)


def test_a_tracer_still_installed_when_the_tests_end_fails_the_run():
    """Line jumps cannot skip a file's last line; tests that end in a print leave the assert exposed."""
    tests = ["assert add(2, 3) == 5", "print('the tests ended')"]
    tracer = CHEATS["a tracer that jumps over the tests' lines"]
    assert code_tests(["q", "q"], [tracer, ADD], tests=[tests, tests]) == [0.0, 1.0]
