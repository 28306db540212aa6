"""Progress for long commands (seed, features, run), drawn with rich on stderr, and only when
stderr is a terminal: piped, redirected or JSON output stays exactly as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

Advance = Callable[[int, int], None]  # (done, total)


def console() -> Console:
    return Console(stderr=True)


@contextmanager
def working(text: str) -> Iterator[None]:
    """A spinner with `text` while the block runs (nothing without a terminal)."""
    err = console()
    if not err.is_terminal:
        yield
        return
    with err.status(text):
        yield


@contextmanager
def steps(text: str) -> Iterator[Advance]:
    """A bar for work done in counted steps; yields `advance(done, total)`."""
    err = console()
    columns = (SpinnerColumn(), TextColumn(text), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(text, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
