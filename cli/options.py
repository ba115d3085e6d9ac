"""Option names shared by every command, and the checks that keep them honest.

One vocabulary across commands (the README's option table): ``-m/--model`` is the model
folder read (required wherever a command reads one), ``-o/--output`` what the command writes,
``--overwrite`` replaces an existing output, ``--quantization`` is CTranslate2's and
``nmt export``'s name for the weight type. Old spellings keep working for scripts written
against them, with a deprecation warning (:func:`renamed`, :func:`renamed_flag`).

Click takes the last value of a single-value option given twice, so ``-m A -m B`` once
translated with ``B`` alone; :class:`CheckedCommand` makes a repeated single-value option a
usage error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperCommand

from cli.console import err_console

T = TypeVar("T")


class CheckedCommand(TyperCommand):
    """A Typer command that refuses a single-value option given more than once, and shows
    its help texts as written.

    Typer renders help as Rich markup, in which ``[model]`` or ``[default: 5]`` reads as a
    style tag and vanishes from ``--help``; the command's and its options' help texts are
    plain text, so their brackets are escaped once here.

    Raises:
        typer.BadParameter: ``--beam-size 5 --beam-size 3`` (names the option and says to give
            it once; a usage error, exit status 2). Options that take several values
            (``multiple=True``, e.g. ``-m`` in ``nmt translate`` for an ensemble) and
            counters are not checked.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)  # type: ignore[attr-defined]
        if self.help:
            self.help = escape(self.help)
        if self.short_help:
            self.short_help = escape(self.short_help)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        check_repeated(self.params, args)
        return super().parse_args(ctx, args)


def check_repeated(params: Sequence[Any], args: Sequence[str]) -> None:
    """Raise :class:`typer.BadParameter` if ``args`` (before ``--``) give a single-value
    option of ``params`` (Click parameters) twice, under any of its names (``--output x -o y``
    counts as twice)."""
    tokens = list(args[: args.index("--")] if "--" in args else args)
    for param in params:
        if param.param_type_name != "option" or param.multiple or param.count:
            continue
        names = [*param.opts, *param.secondary_opts]
        seen = [
            t
            for t in tokens
            if t in names or any(t.startswith(n + "=") for n in names if n.startswith("--"))
        ]
        if len(seen) > 1:
            shown = " / ".join(dict.fromkeys(s.split("=")[0] for s in seen))
            raise typer.BadParameter(
                f"given {len(seen)} times; it takes one value: give it once", param_hint=shown
            )


def deprecated(old: str, new: str) -> None:
    """Warn on stderr that option ``old`` is now spelled ``new``."""
    err_console.print(
        f"[yellow]warning:[/] {old} is deprecated and will be removed: write {new}",
        highlight=False,
    )


def renamed(value: T | None, old_value: T | None, new: str, old: str, required: bool = False) -> T:
    """The value of option ``new``, also accepted under its old spelling ``old`` (with a
    deprecation warning).

    Raises:
        typer.BadParameter: both spellings given, or neither when ``required`` (a usage
            error, exit status 2).
    """
    if old_value is not None:
        if value is not None:
            raise typer.BadParameter(f"{old} is its old spelling: give only {new}", param_hint=new)
        deprecated(old, new)
        return old_value
    if value is None and required:
        raise typer.BadParameter("missing: this option is required", param_hint=new)
    return value  # type: ignore[return-value]


def renamed_flag(value: bool, old_value: bool, new: str, old: str) -> bool:
    """A flag ``new`` that is also accepted as ``old`` (with a deprecation warning)."""
    if old_value:
        deprecated(old, new)
    return value or old_value


def hidden(*names: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` for an old spelling: accepted, not shown in ``--help``."""
    return typer.Option(*names, hidden=True, **kwargs)


# Parameters shared by the commands that write a folder (export, import marian): the new
# --overwrite flag and the old spellings --out and --force, accepted and hidden.
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace the output folder if it exists.")
]
OldOut = Annotated[Path | None, hidden("--out")]
OldForce = Annotated[bool, hidden("--force")]


def output_folder(
    output: Path | None, out: Path | None, overwrite: bool, force: bool
) -> tuple[Path, bool]:
    """``(folder, overwrite)`` of a command that writes a folder, from ``-o/--output`` and
    ``--overwrite`` or their old spellings ``--out`` and ``--force`` (:func:`renamed`).

    Raises:
        typer.BadParameter: no output folder, or both spellings of it.
    """
    folder = renamed(output, out, "--output", "--out", required=True)
    return folder, renamed_flag(overwrite, force, "--overwrite", "--force")


# The vocabulary options of prepare and train (nmt.data.vocab.vocab_options reads them).
VocabLayout = Annotated[
    str | None,
    typer.Option(
        "--vocab-layout",
        help="joint: one SentencePiece model for both sides (default); separate: one per side "
        "(different scripts), with an untied source embedding.",
    ),
]
VocabSize = Annotated[
    int | None,
    typer.Option(help="SentencePiece vocabulary size (default 8000; each side's if separate)."),
]
SrcVocabSize = Annotated[
    int | None, typer.Option(help="Source vocabulary size (--vocab-layout separate).")
]
TgtVocabSize = Annotated[
    int | None, typer.Option(help="Target vocabulary size (--vocab-layout separate).")
]
