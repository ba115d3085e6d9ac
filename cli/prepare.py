"""``nmt prepare``: encode a parallel corpus once into a memory-mapped data folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.console import err_console, handle_errors, make_progress, sigterm_as_interrupt
from cli.options import SrcVocabSize, TgtVocabSize, VocabLayout, VocabSize, hidden, renamed
from nmt.config import ModelConfig, TrainConfig
from nmt.data.store import PrepareSummary
from nmt.data.store import prepare as prepare_corpus
from nmt.data.vocab import vocab_options


def summary_table(summary: PrepareSummary) -> Table:
    """Lines kept and dropped (by reason), tokens per language, time."""
    table = Table(title=f"prepared {summary.out_dir}", show_header=False)
    table.add_row("sentence pairs read", f"{summary.lines:,}")
    table.add_row("kept", f"{summary.kept:,}")
    reasons = {
        "empty": "dropped: a side is empty",
        "too_long": "dropped: a side longer than --max-len",
        "ratio": "dropped: length ratio above --max-ratio",
    }
    for reason, label in reasons.items():
        table.add_row(label, f"{summary.dropped[reason]:,}")
    for lang, tokens in summary.tokens.items():
        table.add_row(f"{lang} tokens", f"{tokens:,}")
    if summary.valid_lines:
        table.add_row("validation pairs copied", f"{summary.valid_lines:,}")
    table.add_row("time", f"{summary.seconds:.1f} s")
    return table


@handle_errors
def prepare(
    train: Annotated[
        str, typer.Option("--train", help="Corpus prefix: reads PREFIX.SRC[.gz], PREFIX.TGT[.gz].")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Data folder to write (required).", show_default=False),
    ] = None,
    out: Annotated[Path | None, hidden("--out")] = None,
    src_lang: Annotated[
        str, typer.Option("--src-lang", help="Source language suffix.")
    ] = TrainConfig.src_lang,
    tgt_lang: Annotated[
        str, typer.Option("--tgt-lang", help="Target language suffix.")
    ] = TrainConfig.tgt_lang,
    valid: Annotated[
        str | None,
        typer.Option("--valid", help="Validation prefix, copied so `nmt train --data` finds it."),
    ] = None,
    spm: Annotated[
        Path | None,
        typer.Option(
            help="Use this SentencePiece model (or a model folder's model(s), e.g. to "
            "fine-tune it) instead of training one."
        ),
    ] = None,
    vocab_layout: VocabLayout = None,
    vocab_size: VocabSize = None,
    src_vocab_size: SrcVocabSize = None,
    tgt_vocab_size: TgtVocabSize = None,
    max_len: Annotated[
        int, typer.Option(help="Drop pairs with a side longer than this (tokens).")
    ] = TrainConfig.max_len,
    max_ratio: Annotated[
        float, typer.Option(help="Drop pairs whose token-length ratio exceeds this (0 = off).")
    ] = 0.0,
    workers: Annotated[
        int, typer.Option(help="Encoding processes (0 = one per core, at most 8).")
    ] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a data folder that already exists.")
    ] = False,
) -> None:
    """Encode a parallel corpus with SentencePiece into a memory-mapped data folder."""
    out = renamed(output, out, "--output", "--out", required=True)
    sizes = vocab_options(vocab_layout, vocab_size, src_vocab_size, tgt_vocab_size)
    progress = make_progress()
    task = progress.add_task("encode", total=None)
    with progress, sigterm_as_interrupt():  # a stopped prepare leaves no half-written folder
        summary = prepare_corpus(
            train,
            out,
            src_lang,
            tgt_lang,
            valid_prefix=valid,
            spm_path=spm,
            vocab_size=ModelConfig.vocab_size
            if sizes["vocab_size"] is None
            else sizes["vocab_size"],
            src_vocab_size=sizes["src_vocab_size"] or 0,
            max_len=max_len,
            max_ratio=max_ratio,
            workers=workers,
            overwrite=overwrite,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            on_message=lambda text: progress.console.print(text, highlight=False),
        )
    err_console.print(summary_table(summary))
