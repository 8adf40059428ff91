"""Logging for the CLI: verbosity, the log file, the libraries' own logs, and node progress lines.

barctl prints its results and progress itself (render.py). Through standard `logging`:
- the libraries (transformers, datasets, huggingface_hub, trl, accelerate, DeepSpeed, Python
  warnings) keep their own verbosity; their records reach the terminal only at `-v`, and the log
  file always;
- every node event goes to the log file as a plain line (`barctl.progress`);
- `-q` leaves the terminal nothing but errors.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from barctl.plan import Action

PROGRESS = "barctl.progress"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(verbosity: int, log_file: Path | None) -> None:
    """Configure the root logger: `verbosity` -1 (-q), 0, 1 (-v) or 2 (-vv); `log_file` gets everything."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_barctl", False)]:
        root.removeHandler(handler)
        handler.close()
    console = _Stderr()
    console.setLevel({-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    console.addFilter(_ConsoleFilter(show_libraries=verbosity >= 1))
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
        file.setFormatter(logging.Formatter(_FORMAT))
        handlers.append(file)
    for handler in handlers:
        handler._barctl = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    # Re-install the capture: a second setup in one process (tests, notebooks) may find `showwarning`
    # swapped back by warnings.catch_warnings while logging still believes it captures.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    global _show_progress_bars
    _show_progress_bars = verbosity >= 0 and sys.stderr.isatty()


_show_progress_bars = False


class _Stderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is when a record comes (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _ConsoleFilter(logging.Filter):
    """Progress lines are printed by the reporter already; the libraries' records only at -v."""

    def __init__(self, show_libraries: bool):
        super().__init__()
        self.show_libraries = show_libraries

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == PROGRESS or record.name.startswith(PROGRESS + "."):
            return False
        return record.name.startswith("barctl") or self.show_libraries


def route_library_logs() -> None:
    """Send transformers' and the hub's records through `logging` (to the log file, and the terminal
    at -v) instead of their own stderr handlers; their progress bars only on a terminal."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    _route_deepspeed()
    if not _show_progress_bars:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        transformers_logging.disable_progress_bar()


def _route_deepspeed() -> None:
    """DeepSpeed (which accelerate imports when it is installed) logs to stdout through its own handler
    from its import on: import it here with stdout captured, then send its records through `logging`."""
    if importlib.util.find_spec("deepspeed") is None:
        return
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import deepspeed  # noqa: F401
    logger = logging.getLogger("DeepSpeed")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    for line in captured.getvalue().splitlines():
        logger.warning(line)


def duration(seconds: float) -> str:
    """`1h02m`, or `3m05s` under an hour."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class NodeClock:
    """Counts the nodes an apply runs and the time since it started: `node 3 of 8, 0m35s elapsed`."""

    def __init__(self, total: int):
        self.total, self.count, self.started = total, 0, time.monotonic()

    def next(self) -> str:
        self.count += 1
        total = max(self.total, self.count)  # repairs of damaged inputs add nodes to the plan
        return f"node {self.count} of {total}, {duration(time.monotonic() - self.started)} elapsed"


class LoggedReporter:
    """Writes every node event to the `barctl.progress` log (for --log-file) and passes it on to the
    terminal's reporter, if any, with the node's position: `node i of N` and the elapsed time."""

    def __init__(self, total: int, terminal: Any = None):
        self.clock, self.terminal = NodeClock(total), terminal
        self.log = logging.getLogger(PROGRESS)

    def start(self, action: Action) -> None:
        position = self.clock.next()
        self.log.info("%s: %s (%s)", action.node_id, action.action, position)
        if self.terminal is not None:
            self.terminal.start(action, position)

    def say(self, action: Action, message: str) -> None:
        self.log.info("%s: %s", action.node_id, message)
        if self.terminal is not None:
            self.terminal.say(action, message)

    def done(self, action: Action, entry: dict[str, Any]) -> None:
        self.log.info("%s: done in %.1fs", action.node_id, entry["metrics"]["seconds"])
        if self.terminal is not None:
            self.terminal.done(action, entry)

    def removed(self, action: Action) -> None:
        self.log.info("%s: removed from the lockfile", action.node_id)
        if self.terminal is not None:
            self.terminal.removed(action)
