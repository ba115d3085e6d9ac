"""``nmt shortlist``: build a model folder's vocabulary shortlist from a training corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, handle_errors, make_progress
from nmt.decode.shortlist import DEFAULT_BEST, DEFAULT_FREQUENT, build_shortlist, shortlist_path


@handle_errors
def shortlist(
    model: Annotated[
        Path,
        typer.Option(
            "--model", "-m", help="Model folder written by nmt train.", show_default=False
        ),
    ],
    train: Annotated[
        Path,
        typer.Option(
            help="Corpus prefix: PREFIX.SRC and PREFIX.TGT (.gz or not), the model's languages.",
            show_default=False,
        ),
    ],
    best: Annotated[
        int, typer.Option(help="Candidate target pieces kept per source piece (K).")
    ] = DEFAULT_BEST,
    frequent: Annotated[
        int, typer.Option(help="The N most frequent target pieces, always candidates.")
    ] = DEFAULT_FREQUENT,
) -> None:
    """Build a vocabulary shortlist for nmt translate --shortlist (and nmt export's vmap.txt)."""
    with make_progress() as progress:
        task = progress.add_task("shortlist", total=None)

        def advance(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        built = build_shortlist(model, train, best, frequent, advance)
    err_console.print(
        f"wrote {shortlist_path(model)}: {int((built.candidates >= 0).sum())} candidates for "
        f"{int((built.candidates >= 0).any(1).sum())} source pieces, {built.always.numel()} "
        f"always allowed, from {built.info['pairs']} sentence pairs",
        highlight=False,
        soft_wrap=True,
    )
