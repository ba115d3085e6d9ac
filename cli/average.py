"""``nmt average``: average a run's last N checkpoints into a model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, handle_errors
from nmt.average import average_run


@handle_errors
def average(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by nmt train.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    last: Annotated[int, typer.Option(help="How many of the newest step checkpoints.")] = 5,
    allow_fewer: Annotated[
        bool, typer.Option("--allow-fewer", help="Average all there are if fewer than --last.")
    ] = False,
) -> None:
    """Average the last N step checkpoints of a run into a model folder."""
    paths = average_run(run_dir, last, out, allow_fewer)
    err_console.print(
        f"averaged {len(paths)} checkpoints ({paths[0].name} … {paths[-1].name}) into {out}",
        highlight=False,
    )
