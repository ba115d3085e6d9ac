"""Exact resume: the counters of a run (:class:`TrainState`) and the resume checkpoint that
holds them with the model, optimizer, loss scaler and every process's RNG state.

``resume.pt`` is written atomically (:mod:`nmt.model.checkpoint`), then ``last.safetensors``, so
an interrupted run continues exactly where an uninterrupted one would be: same weights,
same next batch, same dropout masks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt.model import checkpoint as ckpt
from nmt.train.distributed import DistEnv, gather_objects


@dataclass
class TrainState:
    """Counters saved in the resume checkpoint.

    Attributes:
        step: updates done; epoch: the current epoch (1-based); batch_in_epoch: updates of
            this epoch already done (the position in its batch order).
        best_bleu / bad_validations: the best validation BLEU and the validations since it
            (early stopping).
        elapsed_s: training seconds (validation and checkpoints included, start-up not).
        skipped_steps: updates skipped for a non-finite gradient.
        planned_steps: the end of a linear schedule's time budget (0 = not known yet).
    """

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0
    best_bleu: float = -1.0
    bad_validations: int = 0
    elapsed_s: float = 0.0
    skipped_steps: int = 0
    planned_steps: int = 0


def save_resume(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    dist: DistEnv,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``resume.pt``, then ``last.safetensors`` (each atomically).

    ``resume.pt`` comes first because it is what a resume needs (it holds the weights too):
    a stop on SIGTERM must finish it before the job scheduler's SIGKILL (torchrun's comes
    30 s later), and ``last.safetensors`` is a copy of its weights for ``nmt translate``.
    Every process must call this: each one's RNG state is gathered, so that dropout after a
    resume continues exactly as it would have; only the main process writes.
    """
    rng = gather_objects(
        {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        dist,
    )
    if not dist.is_main:
        return
    ckpt.save_resume(
        out_dir / ckpt.RESUME_FILE,
        {
            "format_version": ckpt.FORMAT_VERSION,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "state": dict(vars(state)),
            "rng": rng,
            "python_rng": list(random.getstate()[1]),
            "world_size": dist.world_size,
            **(extra or {}),
        },
    )
    ckpt.save_weights(out_dir / "last.safetensors", model, state.step)  # type: ignore[arg-type]


def load_resume(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dist: DistEnv,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore what :func:`save_resume` wrote into ``model``, ``optimizer``, ``scaler`` and
    this process's RNGs.

    Returns:
        The saved counters and the whole checkpoint dict (for its other fields).

    Raises:
        CheckpointError: an unreadable checkpoint or one of another format version.
    """
    data = ckpt.load_resume(path)
    model.load_state_dict(data["model"])
    optimizer.load_state_dict(data["optimizer"])
    if data.get("scaler"):  # absent in checkpoints of runs without fp16
        scaler.load_state_dict(data["scaler"])
    rngs = data["rng"]
    rng = rngs[dist.rank] if dist.rank < len(rngs) else rngs[0]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate((3, tuple(data["python_rng"]), None))
    return TrainState(**data["state"]), data


def changed_data_order(
    saved: dict[str, Any], now: dict[str, int | str], path: Path, epoch: int
) -> str | None:
    """Compare the batch order a checkpoint was saved with (its ``data_order``: batch
    tokens, seed, accumulation, process count, corpus) with this run's.

    Returns:
        ``None`` when nothing changed, else the message of the error to raise: the first
        changed field, both values and the ways out (``--reset-data-position``, a new
        folder, ``--overwrite``).
    """
    # A checkpoint from before the record used the first batch order (version 1).
    before = saved.get("data_order") or {"batching": 1}
    changed = [k for k in before if k in now and before[k] != now[k]]
    if not changed:
        return None
    field = changed[0]
    return (
        f"{path}: the run was trained with {field}={before[field]!r}, this run gives "
        f"{now[field]!r}; the saved position in epoch {epoch} would then point into another "
        f"batch order (batches skipped or repeated). Resume with {field}={before[field]!r}, "
        "or pass --reset-data-position to continue the weights from the start of a new "
        "epoch, or start a new run folder (--overwrite replaces this one)"
    )


def corpus_fingerprint(data: Any) -> str:
    """Pairs and source+target tokens of a training corpus (a :class:`nmt.data.parallel.Corpus`),
    summed in int64 by numpy: one pass over its length arrays, however large."""
    src = int(np.asarray(data.src_lens).sum(dtype=np.int64))
    tgt = int(np.asarray(data.tgt_lens).sum(dtype=np.int64))
    return f"{len(data)} pairs, {src}+{tgt} tokens"
