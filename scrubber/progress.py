"""Progress for long work: rich bars on a terminal, timestamped lines anywhere else.

A run that is silent for twenty minutes cannot be told from a hung one, and CI
logs are not terminals: rich's live bars are invisible there.  So
:func:`make_progress` picks rich bars only when stderr is a TTY and plain,
flushed, timestamped lines otherwise (stage start and end, and at most one
line per ``interval`` seconds while a stage advances).  ``Silent`` is for
``--quiet`` and tests.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, Protocol, TextIO

Advance = Callable[[int, int], None]  # (done, total)

DEFAULT_INTERVAL = 5.0
"""Seconds between two progress lines of one advancing stage (plain-line output)."""


class Progress(Protocol):
    def stage(
        self, name: str, total: int | None = None, unit: str | None = None
    ) -> contextlib.AbstractContextManager[Advance]: ...

    def log(self, message: str) -> None: ...


class Silent:
    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, unit: str | None = None) -> Iterator[Advance]:
        yield lambda done, total: None

    def log(self, message: str) -> None:
        pass


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


def _count(done: int, total: int | None, unit: str | None) -> str:
    text = f"{done}/{total}" if total is not None else str(done)
    return f"{text} {unit}" if unit else text


class LineProgress:
    """Plain lines for logs: ``2026-12-01T10:41:03Z exposure before: 3/12 canaries, 41 s``.

    Every line is flushed at once, so a ``tail -f`` or a CI log shows it while
    the run is still going.  ``clock`` (elapsed time) and ``wall`` (epoch
    seconds for the timestamp) are injectable for tests.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.wall = wall

    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))
        self.stream.write(f"{stamp} {text}\n")
        self.stream.flush()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, unit: str | None = None) -> Iterator[Advance]:
        name = name.strip()
        start = self.clock()
        last = [start]
        state = [0, total]
        self._line(f"{name}: started" + (f", {_count(0, total, unit)}" if total is not None else ""))

        def advance(done: int, total_now: int) -> None:
            state[0], state[1] = done, total_now
            now = self.clock()
            if now - last[0] >= self.interval:
                last[0] = now
                self._line(f"{name}: {_count(done, total_now, unit)}, {_seconds(now - start)}")

        try:
            yield advance
        except BaseException:
            self._line(f"{name}: failed after {_seconds(self.clock() - start)}")
            raise
        self._line(f"{name}: done, {_count(state[0], state[1], unit)}, {_seconds(self.clock() - start)}")

    def log(self, message: str) -> None:
        self._line(message)


class RichProgress:
    """Bars on stderr (stdout stays clean for summaries and piping).

    One live display serves every open stage, because rich allows only one at
    a time: a nested stage (a canary's references inside "exposure") becomes a
    second bar under the first instead of an error.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._bar = None
        self._open = 0

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, unit: str | None = None) -> Iterator[Advance]:
        from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        name = name.strip()
        if self._bar is None:
            self._bar = Bar(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
        bar = self._bar
        self._open += 1
        task = bar.add_task(name, total=total, unit=unit or "")

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            yield advance
            self.console.print(f"[green]✓[/green] {name}")
        finally:
            bar.remove_task(task)
            self._open -= 1
            if self._open == 0:
                bar.stop()
                self._bar = None

    def log(self, message: str) -> None:
        self.console.print(message)


def make_progress(
    quiet: bool, stream: TextIO | None = None, interval: float = DEFAULT_INTERVAL
) -> Progress:
    """Silent when ``quiet``; rich bars when ``stream`` (default stderr) is a terminal; plain lines otherwise."""
    if quiet:
        return Silent()
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if stream is sys.stderr and isatty is not None and isatty():
        return RichProgress()
    return LineProgress(stream, interval=interval)
