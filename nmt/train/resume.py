"""Exact resume: the counters of a run (:class:`TrainState`) and the resume checkpoint that
holds them with the model, optimizer, loss scaler and every process's RNG state.

``resume.pt`` is written atomically (:mod:`nmt.model.checkpoint`), then ``last.safetensors``, so
an interrupted run continues exactly where an uninterrupted one would be: same weights,
same next batch, same dropout masks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt.errors import ConfigError
from nmt.model import checkpoint as ckpt
from nmt.train.distributed import DistEnv, gather_objects


@dataclass
class TrainState:
    """Counters saved in the resume checkpoint.

    Attributes:
        step: updates done; epoch: the current epoch (1-based); batch_in_epoch: updates of
            this epoch already done (the position in its batch order).
        best_bleu: the best validation BLEU.
        best_metric / bad_validations: the best value of the metric early stopping follows
            (``patience_metric``; the loss negated, so that higher is better) and the
            validations since it.
        elapsed_s: wall-clock seconds of the training loops of this run and the starts it
            resumed (waits for batches, validation and checkpoints included, start-up not).
        skipped_steps: updates skipped for a non-finite gradient.
        planned_steps: the end of a linear schedule's time budget (0 = not known yet).
        plan_step / plan_lr / plan_elapsed_s / plan_minutes: the update, learning rate and
            ``elapsed_s`` at the latest time plan (the linear decay runs from that rate at
            that update to 0 at the end; 0 = no plan yet) and the ``max_minutes`` planned
            for (:meth:`nmt.train.trainer.Trainer.plan_time_budget`).
    """

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0
    best_bleu: float = -1.0
    bad_validations: int = 0
    best_metric: float = -math.inf
    elapsed_s: float = 0.0
    skipped_steps: int = 0
    planned_steps: int = 0
    plan_step: int = 0
    plan_lr: float = 0.0
    plan_elapsed_s: float = 0.0
    plan_minutes: float = 0.0


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
    state = TrainState(**data["state"])
    if "best_metric" not in data["state"]:  # saved before patience_metric: BLEU was followed
        state.best_metric = state.best_bleu
    return state, data


def changed_data_order(
    saved: dict[str, Any], now: dict[str, int | str], path: Path, epoch: int
) -> str | None:
    """Compare the batch order a checkpoint was saved with (its ``data_order``: batch
    tokens, seed, batches per update = processes × accum, corpus) with this run's. Another
    process count with the same batches per update is the same order.

    Returns:
        ``None`` when nothing changed, else the message of the error to raise: the first
        changed field, both values and the ways out (``--reset-data-position``, a new
        folder, ``--overwrite``).
    """
    # A checkpoint from before the record used the first batch order (version 1).
    before = dict(saved.get("data_order") or {"batching": 1})
    if "accum" in before and "world_size" in before:  # recorded apart before update_tokens
        before["batches_per_update"] = before.pop("accum") * before.pop("world_size")
    changed = [k for k in before if k in now and before[k] != now[k]]
    if not changed:
        return None
    field = changed[0]
    if field == "batches_per_update":
        return (
            f"{path}: the run's updates were {before[field]} batches each (processes × accum), "
            f"this run's are {now[field]}; the saved position in epoch {epoch} would then "
            "point into other updates. Resume with processes × accum = "
            f"{before[field]} (the same --update-tokens, or --accum {before[field]} divided "
            "by the number of processes), or pass --reset-data-position to continue the "
            "weights from the start of a new epoch, or start a new run folder (--overwrite "
            "replaces this one)"
        )
    return (
        f"{path}: the run was trained with {field}={before[field]!r}, this run gives "
        f"{now[field]!r}; the saved position in epoch {epoch} would then point into another "
        f"batch order (batches skipped or repeated). Resume with {field}={before[field]!r}, "
        "or pass --reset-data-position to continue the weights from the start of a new "
        "epoch, or start a new run folder (--overwrite replaces this one)"
    )


# What a resumed run may change (see check_same_recipe): its budgets, how often it
# validates, saves and logs, and the machine it runs on. The batch order's settings are
# checked against resume.pt instead (changed_data_order, with --reset-data-position).
MAY_CHANGE_ON_RESUME = (
    "max_steps", "max_epochs", "max_minutes", "patience", "eval_every", "save_every",
    "log_every", "keep_checkpoints", "device", "dtype", "compile", "onednn", "dist_timeout",
    "tensorboard", "valid_autocast", "tf32",
)  # fmt: skip
DATA_ORDER = ("batch_tokens", "seed", "accum", "update_tokens")


def check_same_recipe(out_dir: Path, train_cfg: Any) -> None:
    """Refuse to resume the run in ``out_dir`` with a training recipe (``train_cfg``, a
    :class:`~nmt.config.TrainConfig`) other than the one its ``config.json`` records, but for
    :data:`MAY_CHANGE_ON_RESUME` and the batch order's settings (:data:`DATA_ORDER`,
    checked by :func:`changed_data_order`). A setting the record lacks (a run of an older
    nmt) is not compared.

    Raises:
        ConfigError: the first differing setting, both values and the ways out.
    """
    path = out_dir / ckpt.CONFIG_FILE
    recorded = ckpt.read_config(out_dir).get("train", {})
    given = json.loads(json.dumps(dataclasses.asdict(train_cfg)))  # tuples as JSON lists
    for name, was in recorded.items():
        if name in MAY_CHANGE_ON_RESUME or name in DATA_ORDER or name not in given:
            continue
        if given[name] != was:
            raise ConfigError(
                f"{path}: the run was trained with {name}={was!r}, this command gives "
                f"{given[name]!r} (--{name.replace('_', '-')} or the config file); a resumed "
                "run keeps its recorded settings: resume without the option, or start a new "
                "run folder (--overwrite replaces this one). Only "
                f"{', '.join(MAY_CHANGE_ON_RESUME)} may change on resume"
            )


def corpus_fingerprint(data: Any) -> str:
    """Pairs and source+target tokens of a training corpus (a :class:`nmt.data.parallel.Corpus`),
    summed in int64 by numpy: one pass over its length arrays, however large."""
    src = int(np.asarray(data.src_lens).sum(dtype=np.int64))
    tgt = int(np.asarray(data.tgt_lens).sum(dtype=np.int64))
    return f"{len(data)} pairs, {src}+{tgt} tokens"
