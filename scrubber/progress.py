"""Progress for long work: rich bars on a terminal, silence in tests and pipes."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Protocol

Advance = Callable[[int, int], None]  # (done, total)


class Progress(Protocol):
    def stage(self, name: str, total: int | None = None) -> contextlib.AbstractContextManager[Advance]: ...

    def log(self, message: str) -> None: ...


class Silent:
    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Advance]:
        yield lambda done, total: None

    def log(self, message: str) -> None:
        pass


class RichProgress:
    """One transient bar per stage on stderr; messages go to stderr too, so
    stdout stays clean for summaries and piping."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Advance]:
        from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        with Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(name, total=total)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield advance
        self.console.print(f"[green]✓[/green] {name}")

    def log(self, message: str) -> None:
        self.console.print(message)
