"""``nmt export``: convert a model folder for another inference engine (CTranslate2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, fail, handle_errors, status
from cli.options import OldForce, OldOut, Overwrite, output_folder
from nmt.interop.export import EXPORT_FORMATS, QUANTIZATIONS, export_ctranslate2


@handle_errors
def export(
    model: Annotated[
        Path,
        typer.Option(
            "--model", "-m", help="Model folder written by nmt train.", show_default=False
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder to write (required).", show_default=False),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help=f"Target engine: {', '.join(EXPORT_FORMATS)}.")
    ] = "ctranslate2",
    quantization: Annotated[
        str | None,
        typer.Option(help=f"Weight type: {', '.join(QUANTIZATIONS)} (default float32)."),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Weights file to export instead of model.safetensors (e.g. last.safetensors)."
        ),
    ] = None,
    overwrite: Overwrite = False,
    out: OldOut = None,
    force: OldForce = False,
) -> None:
    """Export a model folder to CTranslate2; translate with nmt translate -m OUTPUT."""
    out, force = output_folder(output, out, overwrite, force)
    if format not in EXPORT_FORMATS:
        fail(f"--format {format}: choose one of {', '.join(EXPORT_FORMATS)}")
    with status(f"exporting {model} to {format}"):
        path = export_ctranslate2(model, out, quantization, weights=weights, force=force)
    err_console.print(
        f"exported {model} to {path} ({format}, {quantization or 'float32'})", highlight=False
    )
