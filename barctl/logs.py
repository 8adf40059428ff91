"""Logging for the CLI: verbosity, the log file, the libraries' own logs, and node progress lines.

barctl prints its results and progress itself (render.py, progress.py). Through standard `logging`:
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barctl import progress

if TYPE_CHECKING:
    from rich.console import Console

    from barctl.engine.plan import Action

PROGRESS = "barctl.progress"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(verbosity: int, log_file: Path | None, terminal: Console | None = None) -> None:
    """Configure the root logger: `verbosity` -1 (-q), 0, 1 (-v) or 2 (-vv); `log_file` gets everything.

    Progress (barctl.progress) draws its bars on the `terminal` console when stdout is a terminal."""
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
    progress.choose(verbosity, terminal)


class _Stderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is when a record comes (test runners swap it)."""

    @property
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
    library_progress_bars(progress.current_mode() == "bars")


def library_progress_bars(show: bool) -> None:
    """The libraries' own bars (downloads, loading, dataset preparation) on or off, where the user's
    environment does not decide; they redraw with carriage returns, which only a terminal reads."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    switches = [(hub.enable_progress_bars, hub.disable_progress_bars, "HF_HUB_DISABLE_PROGRESS_BARS"),
                (datasets.enable_progress_bars, datasets.disable_progress_bars, "HF_DATASETS_DISABLE_PROGRESS_BARS"),
                (transformers_logging.enable_progress_bar, transformers_logging.disable_progress_bar, None)]
    for enable, disable, environment in switches:
        if environment is None or os.environ.get(environment) is None:
            (enable if show else disable)()


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
    """Counts the nodes an apply runs, the time since it started and the time left:
    `node 3 of 8, 0m35s elapsed, about 4m10s left`.

    The time left sums the planned nodes not finished yet, each estimated from the finished ones: a
    node that trains and has a FLOPs estimate in the plan (barctl.engine.cost) at the seconds per FLOP the
    finished such nodes took; any other node at the mean time of the finished nodes of its sort
    (training or not), else of all of them. While nothing can be estimated so, nothing is said.
    """

    def __init__(self, planned: Sequence[str], training_flops: Mapping[str, float | None] | None = None):
        self.planned, self.count, self.started = list(planned), 0, time.monotonic()
        self.trains = set(training_flops or {})
        self.flops = {node: flops for node, flops in (training_flops or {}).items() if flops}
        self.seconds: dict[str, float] = {}

    def next(self) -> str:
        self.count += 1
        total = max(len(self.planned), self.count)  # repairs of damaged inputs add nodes to the plan
        text = f"node {self.count} of {total}, {duration(time.monotonic() - self.started)} elapsed"
        left = self.remaining()
        return text if left is None else f"{text}, about {duration(left)} left"

    def finished(self, node_id: str, seconds: float) -> None:
        self.seconds[node_id] = seconds

    def remaining(self) -> float | None:
        """Seconds the planned nodes not finished yet will take, or None when one cannot be estimated."""
        estimates = [self._estimate(node) for node in self.planned if node not in self.seconds]
        return None if not estimates or None in estimates else sum(e for e in estimates if e is not None)

    def _estimate(self, node_id: str) -> float | None:
        if node_id in self.flops:
            measured = [node for node in self.seconds if node in self.flops]
            if not measured:
                return None
            return self.flops[node_id] * sum(self.seconds[n] for n in measured) / sum(self.flops[n] for n in measured)
        alike = [s for node, s in self.seconds.items() if (node in self.trains) == (node_id in self.trains)]
        pool = alike or list(self.seconds.values())
        return sum(pool) / len(pool) if pool else None


class LoggedReporter:
    """Writes every node event to the `barctl.progress` log (for --log-file) and passes it on to the
    terminal's reporter, if any, with the node's position: `node i of N`, the elapsed time and the time
    left. `costs` are the plan's estimates of its training nodes (barctl.engine.cost)."""

    def __init__(self, planned: Sequence[str], terminal: Any = None,
                 costs: Mapping[str, Mapping[str, Any]] | None = None):
        self.clock = NodeClock(planned, {node: cost.get("flops") for node, cost in (costs or {}).items()})
        self.terminal, self.log = terminal, logging.getLogger(PROGRESS)

    def start(self, action: Action) -> None:
        position = self.clock.next()
        self.log.info("%s: %s (%s)", action.node_id, action.action, position)
        if self.terminal is not None:
            self.terminal.start(action, position)

    def say(self, action: Action, message: str) -> None:
        self.log.info("%s: %s", action.node_id, message)
        if self.terminal is not None:
            self.terminal.say(action, message)

    def note(self, action: Action, message: str) -> None:
        """A line for the log file only (the terminal shows the same progress as a bar)."""
        self.log.info("%s: %s", action.node_id, message)

    def done(self, action: Action, entry: dict[str, Any]) -> None:
        self.clock.finished(action.node_id, entry["metrics"]["seconds"])
        self.log.info("%s: done in %.1fs", action.node_id, entry["metrics"]["seconds"])
        if self.terminal is not None:
            self.terminal.done(action, entry)

    def removed(self, action: Action) -> None:
        self.log.info("%s: removed from the lockfile", action.node_id)
        if self.terminal is not None:
            self.terminal.removed(action)
