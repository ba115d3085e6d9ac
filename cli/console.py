"""The stderr console and progress bars shared by every command.

Everything human-facing goes to stderr so that stdout carries only results (translations,
JSON) and stays clean for pipes.
"""

from __future__ import annotations

import inspect
import re
import signal
import typing
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
from typer.models import OptionInfo

from nmt.errors import ConfigError, NMTError

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


# Library names that a command spells as another of its options (the library's argument
# ``quantize`` is ``--quantization``, CTranslate2's name).
FIELD_ALIASES = {"quantize": "quantization"}


def option_flags(fn: Callable[..., Any], given: dict[str, Any]) -> dict[str, str]:
    """The visible options of the Typer command function ``fn``: parameter name → its long
    flag (``beam_size`` → ``--beam-size``), plus :data:`FIELD_ALIASES`. A command that also
    reads a config file (a ``config`` parameter) keeps only the options whose value in
    ``given`` (the call's arguments) differs from the default, i.e. those typed: a value
    that came from the file keeps the file's key."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    from_file = "config" in signature.parameters
    flags: dict[str, str] = {}
    for name, param in signature.parameters.items():
        # A command built from a signature (nmt distill) has its options in __signature__.
        metadata = getattr(hints.get(name, param.annotation), "__metadata__", ())
        info = next((m for m in metadata if isinstance(m, OptionInfo)), None)
        if info is None or info.hidden:
            continue
        if from_file and given.get(name, param.default) == param.default:
            continue
        longs = [d for d in info.param_decls or () if d.startswith("--")]
        flags[name] = longs[0].split("/")[0] if longs else "--" + name.replace("_", "-")
    for field, name in FIELD_ALIASES.items():
        if name in flags:
            flags.setdefault(field, flags[name])
    return flags


def flag_names(message: str, flags: dict[str, str]) -> str:
    """``message`` (a :class:`ConfigError`'s, written with the library's field names) with
    the option names that the user types (``flags``, :func:`option_flags`): ``nbest=5 must be
    between 1 and beam_size=2`` becomes ``--nbest 5 must be between 1 and --beam-size 2``.

    A field followed by ``=`` is renamed wherever it is one of ``flags``; a bare field only
    when it has an underscore (``set sampling_topk to 0``), so that plain words such as
    "weights" or "device" stay words.
    """
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))

    def rename(m: re.Match[str]) -> str:
        field, assigned = m.group(1), m.group(2)
        if assigned:
            return flags[field] + " "
        return flags[field] if "_" in field else field

    # Not inside a path or another identifier: no letter, digit, _, /, . or - just before.
    return re.sub(rf"(?<![\w/.-])({names})\b(=?)", rename, message)


def handle_errors(fn: F) -> F:
    """Turn :class:`nmt.errors.NMTError` (a :class:`ConfigError` in the command's option
    names, :func:`flag_names`), and the operating system's errors about files (a
    full disk, a read-only folder, an output path through a file), into a one-line error
    and exit status 1. (Every file nmt writes is written atomically, so such an error
    leaves what was there before.) A closed pipe is left to Python's own handling."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:  # in the options the user types, not the library's names
            fail(flag_names(str(exc), option_flags(fn, kwargs)))
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
