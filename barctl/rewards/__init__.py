"""Verifiable reward functions for GRPO stages, by name.

Each follows TRL's reward-function contract: ``f(prompts, completions, **columns)``
returns one float per completion; completions are strings or lists of messages, and
every other dataset column arrives as a keyword argument (extra ones are ignored).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from barctl.errors import BarctlError
from barctl.rewards.code_tests import code_tests
from barctl.rewards.judge import judged_refusal
from barctl.rewards.math_answer import math_answer
from barctl.rewards.refusal import refusal
from barctl.rewards.symbolic import math_verify
from barctl.rewards.tool_call import tool_call

BUILTIN: dict[str, Callable] = {
    "math_answer": math_answer,
    "math_verify": math_verify,
    "tool_call": tool_call,
    "refusal": refusal,
    "code_tests": code_tests,
}


def resolve(name: str, judge: Mapping[str, Any] | None = None) -> Callable:
    """The reward function called ``name``: a built-in, or ``module:function``.

    ``module:function`` imports that module, which runs its code: the manifest's
    author chose to run it, like any training script. It is looked up on sys.path.
    ``judge``: a judge model's settings (``barctl.rewards.judge``), for ``refusal`` only.
    """
    if judge is not None:
        if name != "refusal":
            raise BarctlError(f"reward {name!r}: only refusal takes a judge")
        return judged_refusal(judge)
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise BarctlError(f"unknown reward {name!r}: use one of {', '.join(BUILTIN)}, or module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise BarctlError(f"reward {name!r}: no module named {module_name!r}") from exc
        raise BarctlError(f"reward {name!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module failed while importing
        raise BarctlError(f"reward {name!r}: importing {module_name!r} failed: {exc!r}") from exc
    function = getattr(module, attribute, None)
    if function is None:
        raise BarctlError(f"reward {name!r}: module {module_name!r} has no {attribute!r}")
    if not callable(function):
        raise BarctlError(f"reward {name!r}: {attribute!r} is not callable")
    if not hasattr(function, "__name__"):  # TRL logs each reward under its __name__

        def named(*args, **kwargs):
            return function(*args, **kwargs)

        named.__name__ = named.__qualname__ = attribute
        return named
    return function
