"""``nmt average``: average a run's last N checkpoints into a model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, handle_errors
from cli.options import Overwrite, hidden, renamed
from nmt.train.average import average_run


@handle_errors
def average(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", help="Run folder written by nmt train (required).", show_default=False
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Model folder to write (required).", show_default=False
        ),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Argument(hidden=True, help="Deprecated: use -m.", show_default=False)
    ] = None,
    out: Annotated[Path | None, hidden("--out")] = None,
    last: Annotated[int, typer.Option(help="How many of the newest step checkpoints.")] = 5,
    allow_fewer: Annotated[
        bool, typer.Option("--allow-fewer", help="Average all there are if fewer than --last.")
    ] = False,
    overwrite: Overwrite = False,
) -> None:
    """Average the last N step checkpoints of a run into a model folder."""
    model = renamed(model, run_dir, "-m/--model", "the positional RUN_DIR", required=True)
    out = renamed(output, out, "--output", "--out", required=True)
    paths = average_run(model, last, out, allow_fewer, overwrite)
    err_console.print(
        f"averaged {len(paths)} checkpoints ({paths[0].name} … {paths[-1].name}) into {out}",
        highlight=False,
    )
