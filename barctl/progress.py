"""Progress of the long steps: a rich bar on a terminal, a plain line per tenth otherwise, nothing under -q.

The mode is chosen once, by `barctl.logs.setup`, and kept in the environment (`BARCTL_PROGRESS`), so
that the ranks `accelerate launch` starts for a stage draw their progress as apply does. Without it
(barctl used as a library) progress comes as plain lines.

Plain lines (`training 10/100 steps (10%), loss 2.31, 1,234 tok/s, ETA 1m05s`) go through the node's
`say`, which prints them and writes them to the log file (under -q, to the log file only); with a bar
on the terminal they go to the log file only (`note`). They come at every tenth of the total (every
step when there are at most ten) and at the end, never more often: no carriage returns in CI logs.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from typing_extensions import Self

ENV = "BARCTL_PROGRESS"
MODES = ("bars", "lines", "off")
LINES_PER_RUN = 10
INDENT = "      "  # under the node's line, as the reporter's messages

Say = Callable[[str], None]
Track = Callable[[Sequence[str]], Iterable[str]]  # what a streaming step iterates its tensor names through
T = TypeVar("T")

_console: Console | None = None


def choose(verbosity: int, console: Console | None = None) -> str:
    """Bars when stdout is a terminal, plain lines when it is not, nothing under -q (`verbosity` -1).

    `console` is the one the CLI prints on, so that its lines land above a running bar."""
    global _console
    _console = console
    chosen = "off" if verbosity < 0 else "bars" if sys.stdout.isatty() else "lines"
    os.environ[ENV] = chosen
    return chosen


def current_mode() -> str:
    value = os.environ.get(ENV, "lines")
    return value if value in MODES else "lines"


def line(label: str, done: int, total: int, unit: str, detail: str = "") -> str:
    """`training 10/100 steps (10%), loss 2.31`."""
    percent = math.floor(100 * done / total) if total else 100
    text = f"{label} {done}/{total}{' ' + unit if unit else ''} ({percent}%)"
    return f"{text}, {detail}" if detail else text


class Steps:
    """The progress of one long step over `total` units: `start(total)`, then `update(done, detail)`, `close()`.

    `say` gets the plain lines (and, under -q, sends them to the log file only); `note` writes a line to
    the log file only, for when a bar shows the progress on the terminal.
    """

    def __init__(self, label: str, unit: str, say: Say, note: Say | None = None, *, mode: str | None = None,
                 console: Console | None = None):
        self.label, self.unit, self.say, self.note = label, unit, say, note
        self.mode = current_mode() if mode is None else mode
        self.console = console if console is not None else _console
        self.total, self.reported, self.next_line, self.every = 0, 0, 1, 1
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total: int) -> Self:
        self.total = total
        self.every = max(1, math.ceil(total / LINES_PER_RUN))
        self.next_line = self.every
        if self.mode == "bars" and self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(TextColumn(INDENT + "{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn(self.unit), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                           console=self.console)
            self._task = bar.add_task(self.label, total=total, detail="")
            bar.start()
            self._bar = bar
        return self

    def update(self, done: int, detail: str = "") -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, detail=detail)
        if done <= self.reported or (done < self.next_line and done < self.total):
            return
        self.reported = done
        self.next_line = (done // self.every + 1) * self.every
        text = line(self.label, done, self.total, self.unit, detail)
        if self.mode != "bars":
            self.say(text)
        elif self.note is not None:
            self.note(text)

    def track(self, items: Sequence[T]) -> Iterator[T]:
        """Yield `items`, counting each one done after it was used."""
        self.start(len(items))
        for done, item in enumerate(items, start=1):
            yield item
            self.update(done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

