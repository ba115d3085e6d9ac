"""The ``nmt`` Typer application: one command per module, registered here."""

from __future__ import annotations

from typing import Annotated

import typer

from nmt import __version__

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Neural machine translation: train, translate, score.",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nmt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """Neural machine translation: train, translate, score."""


def _register() -> None:
    # Imported here so that each command module stays independent of the others.
    from cli import (  # noqa: I001 - one name per line
        average,
        data,
        distill,
        export,
        import_model,
        prepare,
        score,
        serve,
        shortlist,
        train,
        translate,
    )
    from cli.options import CheckedCommand

    # CheckedCommand: a single-value option given twice is an error (cli.options).
    app.command("prepare", cls=CheckedCommand)(prepare.prepare)
    app.command("train", cls=CheckedCommand)(train.train)
    app.command("distill", cls=CheckedCommand)(distill.distill)  # teacher → student
    app.command("translate", cls=CheckedCommand)(translate.translate)
    app.command("score", cls=CheckedCommand)(score.score)
    app.command("average", cls=CheckedCommand)(average.average)
    app.command("export", cls=CheckedCommand)(
        export.export
    )  # CTranslate2 export (nmt.interop.export)
    app.command("serve", cls=CheckedCommand)(serve.serve)  # HTTP server (the serve extra)
    app.command("shortlist", cls=CheckedCommand)(shortlist.shortlist)  # nmt.decode.shortlist
    app.add_typer(data.app, name="data")
    app.add_typer(import_model.app, name="import")  # other toolkits' models (nmt.import_*)


_register()
