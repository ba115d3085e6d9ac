"""``nmt distill``: parse options, call :func:`nmt.train.distill.distill`, draw progress on
stderr.

Its options are its own (the teacher, its search, the distilled corpus) followed by every
option of ``nmt train`` but ``--data`` and ``--pairs`` (the student's training), taken from
:func:`cli.train.train`'s signature so that the two commands cannot drift apart.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TaskID

from cli.console import handle_errors
from cli.options import renamed
from cli.train import RichObserver, run_reported
from cli.train import train as train_command
from nmt.train.distill import distill as run_distill
from nmt.train.options import resolve_options
from nmt.train.teacher import CHUNK_LINES, DistillObserver, TeacherSettings


class DistillRichObserver(RichObserver, DistillObserver):
    """The training progress bar, preceded by one for the teacher's translation step."""

    def __init__(self) -> None:
        super().__init__()
        self.translate_task: TaskID | None = None

    def on_translate_start(self, total_lines: int, done_lines: int) -> None:
        self.progress.start()
        self.translate_task = self.progress.add_task(
            "teacher", total=total_lines, completed=done_lines, info=""
        )

    def on_translated(self, lines: int) -> None:
        if self.translate_task is None:
            return
        self.progress.advance(self.translate_task, lines)
        speed = self.progress.tasks[self.translate_task].speed
        if speed:
            self.progress.update(self.translate_task, info=f"{speed:,.1f} lines/s")


def _own_options(
    model: Annotated[
        list[Path] | None,
        typer.Option(
            "--model",
            "-m",
            help="Teacher model folder (nmt train, or nmt export for the ctranslate2 engine); "
            "repeat for an ensemble (torch engine). Optional with --distilled.",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="The student's preset: student (default), tiny, small, base, big."),
    ] = None,
    train: Annotated[
        str | None,
        typer.Option(
            "--train",
            help="Training corpus prefix: the teacher translates PREFIX.SRC[.gz] (PREFIX.TGT is "
            "not read).",
        ),
    ] = None,
    valid: Annotated[
        str | None,
        typer.Option("--valid", help="Validation corpus prefix: the student validates on it."),
    ] = None,
    beam_size: Annotated[
        int, typer.Option("--beam-size", help="Beam of the teacher's search.")
    ] = 5,
    length_penalty: Annotated[
        float,
        typer.Option(help="GNMT length penalty alpha of the teacher's search and scores."),
    ] = 1.0,
    engine: Annotated[
        str,
        typer.Option(help="The teacher's engine: auto, torch or ctranslate2 (nmt export folders)."),
    ] = "auto",
    chunk_lines: Annotated[
        int,
        typer.Option(help="Source lines translated per chunk file (what a stopped run may redo)."),
    ] = CHUNK_LINES,
    drop_worst_percent: Annotated[
        float,
        typer.Option(
            help="Drop this share (%) of the pairs with the lowest length-normalised teacher "
            "scores (empty outputs are always dropped)."
        ),
    ] = 0.0,
    distilled: Annotated[
        Path | None,
        typer.Option(
            help="Use the teacher's translations in this folder (an earlier run's OUT/distilled) "
            "instead of translating."
        ),
    ] = None,
    spm: Annotated[
        Path | None,
        typer.Option(
            help="The student's own SentencePiece model (file or model folder); default: the "
            "teacher's (--vocab-size: one trained on the distilled corpus)."
        ),
    ] = None,
) -> None:
    """Only its signature is used: the options of ``nmt distill`` that ``nmt train`` lacks or
    means otherwise."""


NOT_FOR_DISTILL = ("data", "pairs", "pair_sampling_temperature")  # one translated corpus


def _parameters() -> list[inspect.Parameter]:
    own = inspect.signature(_own_options, eval_str=True).parameters
    shared = inspect.signature(train_command, eval_str=True).parameters
    return [*own.values()] + [
        p for name, p in shared.items() if name not in own and name not in NOT_FOR_DISTILL
    ]


@handle_errors
def distill(**options: Any) -> None:
    """Distil a teacher into a student: translate the training sources with the teacher, then
    train the student on its translations (sequence-level knowledge distillation).

    Every option of nmt train applies to the student. Running the same command again after a
    stop continues the translation (from its last finished chunk) or the training."""
    o = {p.name: p.default for p in _parameters()} | options
    out = renamed(o["output"], o["out"], "--output", "--out", required=True)
    models = [Path(m) for m in o["model"] or []]
    # The student takes the teacher's vocabulary unless given its own.
    own_vocab = any(o[k] is not None for k in ("vocab_size", "src_vocab_size", "tgt_vocab_size"))
    uses_teacher = models and o["spm"] is None and not own_vocab and o["init_from"] is None
    folders = [(models[0] if uses_teacher else None, "-m"), (o["init_from"], "--init-from")]
    model_cfg, train_cfg = resolve_options(o, out, folders, default_preset="student")
    teacher = None
    if models:
        teacher = TeacherSettings(
            tuple(models), o["beam_size"], o["length_penalty"], o["engine"],
            train_cfg.device, o["chunk_lines"],
        )  # fmt: skip
    run_reported(
        out,
        DistillRichObserver(),
        lambda observer: run_distill(
            teacher, o["train"], o["valid"], out, model_cfg, train_cfg, o["spm"], observer,
            own_vocab=own_vocab, drop_worst_percent=o["drop_worst_percent"],
            distilled=o["distilled"], reset_data_position=o["reset_data_position"],
            overwrite=o["overwrite"], init_from=o["init_from"],
        )[:2],
    )  # fmt: skip


distill.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]
# handle_errors renders a ConfigError in the flags of the function it wraps: the same options.
distill.__wrapped__.__signature__ = distill.__signature__  # type: ignore[attr-defined]
