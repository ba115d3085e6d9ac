"""``train()``: check the input, prepare the run folder, join the process group, run the
:class:`~nmt.trainer.Trainer`.

A folder that already holds ``resume.pt`` is continued from it (see :mod:`nmt.trainer`).
Started by ``torchrun``, every process trains on its share of the batches (DDP).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from nmt import checkpoint as ckpt
from nmt.config import ModelConfig, TrainConfig, from_dict, to_dict
from nmt.data import encode_parallel, read_parallel
from nmt.distributed import DistEnv, barrier, init_distributed, shutdown
from nmt.tokenizer import Tokenizer, train_tokenizer
from nmt.trainer import (  # re-exported: the training API lives under nmt.train
    StepStats,
    Trainer,
    TrainObserver,
    ValidResult,
    inverse_sqrt_lr,
)
from nmt.translate import resolve_device

__all__ = [
    "StepStats",
    "Trainer",
    "TrainObserver",
    "ValidResult",
    "inverse_sqrt_lr",
    "train",
    "prepare_run",
    "stop_on_signals",
]


@contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM finish the current step, then the loop saves and stops."""

    def handler(signum: int, frame: Any) -> None:
        trainer.stop_signal = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def prepare_run(
    out_dir: Path,
    train_text: tuple[list[str], list[str]],
    prefixes: tuple[str, str],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spm_path: str | Path | None,
    observer: TrainObserver,
) -> None:
    """Create or reopen the run folder: ``spm.model`` and ``config.json``.

    A folder with ``resume.pt`` keeps its model shape (from its ``config.json``); the
    training recipe given now applies to the rest of the run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = (out_dir / ckpt.RESUME_FILE).is_file()
    spm_file = out_dir / ckpt.SPM_FILE
    if resume:
        saved = ckpt.read_config(out_dir)
        model_cfg = from_dict(ModelConfig, saved["model"], str(out_dir / ckpt.CONFIG_FILE))
        observer.on_message(f"resuming from {out_dir / ckpt.RESUME_FILE}")
    elif spm_path is not None:
        ckpt.atomic_write(spm_file, lambda f: f.write(Path(spm_path).read_bytes()))
    else:
        observer.on_message(f"training a {model_cfg.vocab_size}-piece SentencePiece model")
        train_tokenizer(train_text[0] + train_text[1], spm_file, model_cfg.vocab_size)
    model_cfg = replace(model_cfg, vocab_size=Tokenizer(spm_file).vocab_size)
    ckpt.write_json(
        out_dir / ckpt.CONFIG_FILE,
        {
            "format_version": ckpt.FORMAT_VERSION,
            "src_lang": train_cfg.src_lang,
            "tgt_lang": train_cfg.tgt_lang,
            "model": to_dict(model_cfg),
            "train": to_dict(train_cfg),
            "data": {"train": prefixes[0], "valid": prefixes[1]},
        },
    )


def train(
    train_prefix: str | Path,
    valid_prefix: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spm_path: str | Path | None = None,
    observer: TrainObserver | None = None,
) -> tuple[Trainer, str]:
    """Train a model into ``out_dir`` (continuing it if it holds a resume checkpoint).

    Args:
        train_prefix / valid_prefix: corpus prefixes (``PREFIX.LANG[.gz]``).
        out_dir: the run folder; it becomes a model folder ``nmt translate -m`` accepts.
        spm_path: an existing SentencePiece model to use instead of training one.

    Started by ``torchrun``, each process trains on its share of every epoch's batches
    (DDP); only rank 0 writes files, logs and validates.

    Returns:
        The trainer (its ``state`` holds the final counters) and why training stopped.

    Raises:
        InputError: missing, non-UTF-8 or mismatched corpus files, or an empty corpus.
        CheckpointError: an unreadable resume checkpoint. TrainingError: diverged training.
    """
    observer = observer or TrainObserver()
    out_dir = Path(out_dir)
    # Read (and so check) all input before anything is written into the run folder.
    src, tgt = read_parallel(train_prefix, train_cfg.src_lang, train_cfg.tgt_lang)
    valid_src, valid_tgt = read_parallel(valid_prefix, train_cfg.src_lang, train_cfg.tgt_lang)
    if spm_path is not None:
        Tokenizer(spm_path)  # checks the file and its special ids before the folder is made
    env = init_distributed(resolve_device(train_cfg.device))
    try:
        result = _train(
            out_dir,
            (src, tgt),
            (valid_src, valid_tgt),
            (str(train_prefix), str(valid_prefix)),
            model_cfg,
            train_cfg,
            spm_path,
            observer,
            env,
        )
        # Leave the process group together: a rank that tore it down while rank 0 was still
        # writing its files was seen to abort (gloo, "terminate called without an active
        # exception"). Only on success: after an error the other ranks may be gone.
        barrier(env)
        return result
    finally:
        shutdown(env)


def _train(
    out_dir: Path,
    train_text: tuple[list[str], list[str]],
    valid_text: tuple[list[str], list[str]],
    prefixes: tuple[str, str],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spm_path: str | Path | None,
    observer: TrainObserver,
    env: DistEnv,
) -> tuple[Trainer, str]:
    """:func:`train` once the input is read and the process group (if any) is joined."""
    resume = (out_dir / ckpt.RESUME_FILE).is_file()  # checked before rank 0 writes anything
    if env.is_main:
        prepare_run(out_dir, train_text, prefixes, model_cfg, train_cfg, spm_path, observer)
    barrier(env)
    folder_cfg = ckpt.read_config(out_dir)
    model_cfg = from_dict(ModelConfig, folder_cfg["model"], str(out_dir / ckpt.CONFIG_FILE))
    tokenizer = Tokenizer(out_dir / ckpt.SPM_FILE)
    (src, tgt), (valid_src, valid_tgt) = train_text, valid_text
    train_data = encode_parallel(tokenizer, src, tgt, train_cfg.max_len)
    valid_data = encode_parallel(tokenizer, valid_src, valid_tgt, model_cfg.max_positions - 1)
    observer.on_message(
        f"{len(train_data)} training pairs ({train_data.dropped} dropped: empty or longer "
        f"than {train_cfg.max_len} tokens), {len(valid_src)} validation pairs"
    )
    trainer = Trainer(
        out_dir,
        model_cfg,
        train_cfg,
        tokenizer,
        train_data,
        valid_data,
        (valid_src, valid_tgt),
        observer,
        env,
    )
    if resume:
        trainer.load_resume(out_dir / ckpt.RESUME_FILE)
    with stop_on_signals(trainer):
        reason = trainer.run()
    return trainer, reason
