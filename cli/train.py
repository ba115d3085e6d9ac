"""``nmt train``: parse options, call :func:`nmt.train.run.train`, draw progress on stderr."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TaskID, TextColumn
from rich.table import Table

from cli.console import err_console, handle_errors, make_progress, sigterm_as_interrupt
from cli.options import SrcVocabSize, TgtVocabSize, VocabLayout, VocabSize, hidden, renamed
from nmt.train.options import resolve_options
from nmt.train.run import RunStart, StepStats, Trainer, TrainObserver, ValidResult
from nmt.train.run import train as run_training


class RichObserver(TrainObserver):
    """Draws a progress bar (by steps, or by minutes when only a time budget is set)."""

    def __init__(self) -> None:
        self.progress = make_progress(TextColumn("{task.fields[info]}"))
        self.task: TaskID | None = None  # set in on_start
        self.history: list[ValidResult] = []
        self.by_time = False
        self.step_info = ""  # the last update's part of the status line

    def on_start(self, start: RunStart) -> None:
        total: int | None = None
        if start.max_steps:
            total = start.max_steps
        elif start.max_epochs:
            total = start.max_epochs * start.steps_per_epoch
        elif start.max_minutes:
            total, self.by_time = round(start.max_minutes * 60), True
        done = round(start.elapsed_s) if self.by_time else start.step
        self.progress.start()
        self.task = self.progress.add_task(
            "train (s)" if self.by_time else "train", total=total, completed=done, info=""
        )

    def on_step(self, s: StepStats) -> None:
        self.step_info = (
            f"step {s.step} ep {s.epoch} loss {s.loss:.3f} lr {s.lr:.2e} "
            f"|g| {s.grad_norm:.2f} {s.tgt_tokens_per_s:,.0f} tok/s"
        )
        completed = round(s.elapsed_s) if self.by_time else s.step
        if self.task is not None:
            self.progress.update(self.task, completed=completed, info=self.status())

    def status(self) -> str:
        """The status line: the last update's numbers and the latest validation's BLEU."""
        if not self.history:
            return self.step_info
        best = max(h.bleu for h in self.history)
        return f"{self.step_info} BLEU {self.history[-1].bleu:.2f} (best {best:.2f})"

    def on_validate(self, r: ValidResult) -> None:
        self.history.append(r)
        if self.task is not None:  # a validation follows its step's update: show its BLEU now
            self.progress.update(self.task, info=self.status())
        mark = " [green]best[/]" if r.best else ""
        self.progress.console.print(
            f"valid step {r.step}: loss {r.loss:.3f} ppl {r.ppl:.2f} BLEU {r.bleu:.2f} "
            f"chrF {r.chrf:.2f} ({r.elapsed_s:.0f}s){mark}"
        )
        if r.directions:  # a multilingual run: BLEU and chrF above are the means
            self.progress.console.print(
                "  "
                + ", ".join(
                    f"{name} BLEU {d['bleu']:.2f} chrF {d['chrf']:.2f}"
                    for name, d in r.directions.items()
                ),
                highlight=False,
            )

    def on_message(self, text: str) -> None:
        err_console.print(text, highlight=False)

    def stop(self) -> None:
        self.progress.stop()


def summary_table(trainer: Trainer, reason: str, history: list[ValidResult]) -> Table:
    """The end-of-run summary."""
    table = Table(title=f"training finished: {reason}", show_header=False)
    s = trainer.state
    table.add_row("run folder", str(trainer.out_dir))
    table.add_row("steps / epochs", f"{s.step} / {s.epoch}")
    table.add_row("training time", f"{s.elapsed_s / 60:.1f} min")
    if history:
        best = max(history, key=lambda h: h.bleu)
        table.add_row("best valid BLEU", f"{best.bleu:.2f} (step {best.step})")
        chosen = [h for h in history if h.best]
        if chosen and trainer.cfg.patience_metric != "bleu":
            h = chosen[-1]
            table.add_row(
                f"model.safetensors (best {trainer.cfg.patience_metric})",
                f"step {h.step}: loss {h.loss:.3f}, BLEU {h.bleu:.2f}, chrF {h.chrf:.2f}",
            )
        table.add_row("last valid loss / ppl", f"{history[-1].loss:.3f} / {history[-1].ppl:.2f}")
        table.add_row("BLEU signature", best.bleu_signature)
    if s.skipped_steps:
        table.add_row("skipped updates (NaN/inf)", str(s.skipped_steps))
    return table


@handle_errors
def train(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Run folder, continued if it holds resume.pt (required).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path | None, hidden("--out")] = None,
    train: Annotated[
        str | None,
        typer.Option(
            "--train",
            help="Training corpus prefix: reads PREFIX.SRC[.gz] and PREFIX.TGT[.gz] and "
            "prepares it into OUT/data.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Data folder written by `nmt prepare` (instead of --train)."),
    ] = None,
    valid: Annotated[
        str | None,
        typer.Option("--valid", help="Validation corpus prefix (default: the --data copy)."),
    ] = None,
    src_lang: Annotated[
        str | None, typer.Option("--src-lang", help="Source language suffix (default de).")
    ] = None,
    tgt_lang: Annotated[
        str | None, typer.Option("--tgt-lang", help="Target language suffix (default en).")
    ] = None,
    pairs: Annotated[
        str | None,
        typer.Option(
            "--pairs",
            help="Train one multilingual model on these pairs, e.g. de-en,fr-en,cs-en (files "
            "PREFIX.LANG or PREFIX.SRC-TGT.LANG; a <2xx> target tag leads each source).",
        ),
    ] = None,
    pair_sampling_temperature: Annotated[
        float | None,
        typer.Option(
            "--pair-sampling-temperature",
            help="T of p(pair) ∝ (size share)^(1/T) with --pairs (default 1: as the data; 5 "
            "favours small pairs).",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Model preset: tiny, small, base, big, student (default small)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with preset, [model] and [train] tables.")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start from the weights of this model folder (fine-tuning): its shape and "
            "SentencePiece model come along; fresh optimizer and schedule.",
        ),
    ] = None,
    spm: Annotated[
        Path | None,
        typer.Option(
            help="Use this SentencePiece model (or a model folder's model(s)) instead of "
            "training one."
        ),
    ] = None,
    vocab_layout: VocabLayout = None,
    vocab_size: VocabSize = None,
    src_vocab_size: SrcVocabSize = None,
    tgt_vocab_size: TgtVocabSize = None,
    batch_tokens: Annotated[
        int | None,
        typer.Option(
            help="Padded tokens per batch on each process: sentences × the longest side "
            "(+ BOS/EOS) among them."
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warm-up steps.")] = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option(
            help="After warm-up: inverse_sqrt (default) or linear (decays to 0 at the end of "
            "--max-steps/--max-epochs/--max-minutes)."
        ),
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout rate.")] = None,
    label_smoothing: Annotated[
        float | None,
        typer.Option(help="Epsilon of label-smoothed cross-entropy (default 0.1; 0 = none)."),
    ] = None,
    clip_norm: Annotated[
        float | None,
        typer.Option(
            help="Clip the gradient's L2 norm to this (0 = no clipping; default 1.0, base/big 0)."
        ),
    ] = None,
    max_len: Annotated[
        int | None,
        typer.Option(
            help="Leave out training pairs with more tokens than this on either side "
            "(default 200, base/big 256; with --data, at most the folder's nmt prepare --max-len)."
        ),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many updates.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Stop after this many epochs.")] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many minutes of wall-clock time, counted from the start of "
            "the training loop (waits for batches, validation, checkpoints and skipped "
            "updates included; start-up and data preparation not), summed over resumes."
        ),
    ] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validate every N updates.")] = None,
    save_every: Annotated[
        int | None,
        typer.Option(
            help="Write resume.pt and a step checkpoint every N updates (with --lr-schedule "
            "linear the step checkpoints are spread over the last 20% of the run instead)."
        ),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="Stop after N validations without a better --patience-metric."),
    ] = None,
    patience_metric: Annotated[
        str | None,
        typer.Option(
            help="bleu (default), chrf or loss: what --patience follows and model.safetensors "
            "is chosen by (fairseq's --best-checkpoint-metric)."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="auto, fp32, bf16 or fp16 (autocast; fp16 loss-scaled).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    valid_autocast: Annotated[
        bool | None,
        typer.Option(
            "--valid-autocast/--no-valid-autocast",
            help="Validate under the training dtype's autocast (default), or in float32.",
        ),
    ] = None,
    tf32: Annotated[
        bool | None,
        typer.Option(
            "--tf32/--no-tf32",
            help="On CUDA, let float32 matrix products use TF32 tensor cores (default on; "
            "Ampere and newer).",
        ),
    ] = None,
    accum: Annotated[
        int | None,
        typer.Option(
            help="Accumulate gradients of N batches per update on each process (fairseq's "
            "--update-freq)."
        ),
    ] = None,
    update_tokens: Annotated[
        int | None,
        typer.Option(
            help="Padded tokens per update over all processes, in --batch-tokens' unit "
            "(sentences × their longer side's length; Marian's --mini-batch-words): each "
            "process accumulates max(1, round(N / (processes × batch tokens))) batches, so an "
            "update is the same size on 1 GPU as on 8. Replaces --accum; base/big: 24576."
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option("--tensorboard", help="Also write TensorBoard logs (needs tensorboard)."),
    ] = None,
    dist_timeout: Annotated[
        float | None,
        typer.Option(
            help="Minutes a torchrun process waits for the others in a collective before "
            "failing (default 60)."
        ),
    ] = None,
    reset_data_position: Annotated[
        bool,
        typer.Option(
            "--reset-data-position",
            help="On resume with another batch size, seed, processes × accum or corpus: "
            "continue the weights from the start of a new epoch instead of refusing.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start afresh in a folder that holds a run (its model, checkpoints and logs "
            "are removed, and with --train its prepared data/) instead of resuming it; "
            "other files are left.",
        ),
    ] = False,
    compile_step: Annotated[
        bool | None,
        typer.Option("--compile", help="torch.compile the training step (helps on GPUs)."),
    ] = None,
    encoder_layers: Annotated[
        int | None,
        typer.Option(help="Encoder layers (default: the preset's; fairseq's --encoder-layers)."),
    ] = None,
    decoder_layers: Annotated[
        int | None,
        typer.Option(help="Decoder layers (default: the preset's; fairseq's --decoder-layers)."),
    ] = None,
) -> None:
    """Train a Transformer on parallel text, validating with sacreBLEU as it goes."""
    options = dict(locals())  # the parameters, as given
    out = renamed(output, out, "--output", "--out", required=True)
    if pairs is not None and (src_lang is not None or tgt_lang is not None):
        raise typer.BadParameter(  # they were ignored, yet written into config.json
            "each pair names its languages: drop --src-lang/--tgt-lang", param_hint="--pairs"
        )
    model_cfg, train_cfg = resolve_options(
        options, out, [(data, "--data"), (init_from, "--init-from")]
    )
    run_reported(
        out,
        RichObserver(),
        lambda observer: run_training(
            train,
            valid,
            out,
            model_cfg,
            train_cfg,
            spm,
            observer,
            data_dir=data,
            reset_data_position=reset_data_position,
            overwrite=overwrite,
            init_from=init_from,
        ),
    )


def run_reported(
    out: Path, observer: RichObserver, run: Callable[[RichObserver], tuple[Trainer, str]]
) -> None:
    """Run ``run(observer)`` (a training) with SIGTERM as Ctrl+C, then print the summary on
    stderr; a run stopped by a signal exits with status 130 after saying how to resume it."""
    try:
        with sigterm_as_interrupt():  # before the loop's own handlers: clean up, as Ctrl+C
            trainer, reason = run(observer)
    finally:
        observer.stop()
    if not trainer.dist.is_main:
        return  # under torchrun, rank 0 reports
    err_console.print(summary_table(trainer, reason, observer.history))
    if trainer.stop_signal is not None:
        err_console.print(
            f"[yellow]interrupted[/]: resume checkpoint in {out}/resume.pt; run the same command "
            "again to continue"
        )
        raise typer.Exit(130)
