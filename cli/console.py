"""The stderr console and progress bars shared by every command.

Everything human-facing goes to stderr so that stdout carries only results (translations,
JSON) and stays clean for pipes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nmt.errors import NMTError

err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def make_progress(*extra: Any) -> Progress:
    """A progress bar on stderr that leaves stdout alone (``redirect_stdout=False``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        redirect_stdout=False,
        redirect_stderr=False,
        transient=False,
    )


def fail(message: str) -> None:
    """Print a one-line error on stderr and exit with status 1."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def handle_errors(fn: F) -> F:
    """Turn :class:`nmt.errors.NMTError`, and the operating system's errors about files (a
    full disk, a read-only folder, an output path through a file), into a one-line error
    and exit status 1. (Every file nmt writes is written atomically, so such an error
    leaves what was there before.) A closed pipe is left to Python's own handling."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NMTError as exc:
            fail(str(exc))
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) or exc.errno is None:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            fail(
                f"{where}{exc.strerror}; check the path, its permissions and the free disk "
                "space, then run the command again"
            )

    return wrapper  # type: ignore[return-value]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what a job scheduler or ``kill`` sends) handled as Ctrl+C while the block
    runs: the work in progress is cleaned up (a half-prepared data folder removed) and the
    exit status is Ctrl+C's, instead of the process dying with its temporary files left.
    The training loop installs its own handlers (save, then stop) inside the block."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner on stderr while a step without measurable progress runs."""
    with err_console.status(message):
        yield
