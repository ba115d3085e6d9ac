"""``nmt import marian``: turn a Hugging Face Marian (OPUS-MT) folder into an nmt model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, handle_errors, status
from cli.options import CheckedCommand, OldForce, OldOut, Overwrite, output_folder
from nmt.interop.import_marian import import_marian

app = typer.Typer(no_args_is_help=True, help="Import models of other toolkits.")


@app.command("marian", cls=CheckedCommand)
@handle_errors
def marian(
    hf_dir: Annotated[
        Path,
        typer.Argument(
            help="A Hugging Face MarianMTModel folder, or its hub cache folder "
            "(models--Helsinki-NLP--opus-mt-de-en)."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Model folder to write (required).", show_default=False
        ),
    ] = None,
    overwrite: Overwrite = False,
    out: OldOut = None,
    force: OldForce = False,
) -> None:
    """Import an OPUS-MT / MarianMTModel folder; translate with nmt translate -m OUTPUT."""
    out, force = output_folder(output, out, overwrite, force)
    with status(f"importing {hf_dir}"):
        path = import_marian(hf_dir, out, force=force)
    err_console.print(f"imported {hf_dir} into {path}", highlight=False)
