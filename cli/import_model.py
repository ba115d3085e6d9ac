"""``nmt import marian``: turn a Hugging Face Marian (OPUS-MT) folder into an nmt model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, handle_errors, status
from nmt.import_marian import import_marian

app = typer.Typer(no_args_is_help=True, help="Import models of other toolkits.")


@app.command("marian")
@handle_errors
def marian(
    hf_dir: Annotated[
        Path,
        typer.Argument(
            help="A Hugging Face MarianMTModel folder, or its hub cache folder "
            "(models--Helsinki-NLP--opus-mt-de-en)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Import an OPUS-MT / MarianMTModel folder; translate with nmt translate -m OUT."""
    with status(f"importing {hf_dir}"):
        path = import_marian(hf_dir, out, force=force)
    err_console.print(f"imported {hf_dir} into {path}", highlight=False)
