"""``nmt data``: show the dataset catalog and fetch a dataset's files with sha256 checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from cli.console import err_console, handle_errors, make_progress
from cli.options import CheckedCommand, hidden, renamed
from nmt.data.catalog import Dataset, get_dataset, load_catalog

MIRROR_ENV = "NMT_DATA_MIRROR"

app = typer.Typer(
    help="List the dataset catalog (data/catalog.json) and fetch its files.",
    no_args_is_help=True,
)


@app.command("list", cls=CheckedCommand)
@handle_errors
def list_datasets() -> None:
    """Show the datasets of the catalog: languages, splits, files, size and citation."""
    table = Table(title="nmt dataset catalog")
    for column in ("name", "languages", "splits (sentences)", "files", "size", "citation"):
        table.add_column(column)
    for dataset in load_catalog().values():
        table.add_row(*_row(dataset))
    Console().print(table)


def _row(dataset: Dataset) -> tuple[str, ...]:
    splits = ", ".join(f"{split} {lines:,}" for split, lines in dataset.splits.items())
    sizes = [file.bytes for file in dataset.files]
    size = "?" if None in sizes else f"{sum(s or 0 for s in sizes) / 1e6:.1f} MB"
    return (
        dataset.name,
        " ".join(dataset.languages),
        splits,
        str(len(dataset.files)),
        size,
        dataset.citation,
    )


@app.command("get", cls=CheckedCommand)
@handle_errors
def get(
    name: Annotated[str, typer.Argument(help="Dataset name, as shown by `nmt data list`.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder to write the files to, created if missing (required).",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[Path | None, hidden("--out-dir")] = None,
    mirror: Annotated[
        Path | None,
        typer.Option(
            "--mirror",
            envvar=MIRROR_ENV,
            help="Copy the files from this local folder instead of downloading them.",
        ),
    ] = None,
) -> None:
    """Fetch the files of dataset NAME into a folder and check their sha256 digests.

    Files already there with the right digest are skipped.
    """
    target = renamed(output, out_dir, "--output", "--out-dir", required=True)
    bars = _FileBars()
    try:
        paths = get_dataset(name, target, mirror=mirror, progress=bars)
    finally:
        bars.stop()
    source = f"mirror {mirror}" if mirror is not None else "upstream URLs"
    err_console.print(f"{len(paths)} files of {name} in {target} (from {source}, sha256 checked)")


class _FileBars:
    """The ``progress`` callback of :func:`nmt.data.catalog.get_dataset`: one bar per file,
    in bytes.

    The bars start with the first file, so that an error found before (an unknown name, a
    missing mirror) is printed as one line without an empty progress display.
    """

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.progress is None:
            self.progress = make_progress()
            self.progress.start()
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
