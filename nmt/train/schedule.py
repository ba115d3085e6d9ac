"""Learning-rate schedules, each a pure function of the 1-based update number, and the
budget arithmetic that goes with them (updates that fit a time budget, when to keep a step
checkpoint for averaging)."""

from __future__ import annotations

import math
from typing import Any

from nmt.config import TrainConfig

# With a linear schedule's planned end, the kept step checkpoints are spread over this share
# of the updates before it.
AVERAGE_SHARE = 0.2

METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "loss": "validation loss"}  # patience_metric


def inverse_sqrt_lr(step: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then decay with 1/sqrt(step).

    This is Vaswani et al. (2017) eq. 3 with the constant ``d_model^-0.5`` replaced by the
    peak rate: ``lr = peak * min(step / warmup, sqrt(warmup / step))`` for 1-based ``step``.
    """
    step = max(step, 1)
    if warmup_steps == 0:
        return peak / math.sqrt(step)
    return peak * min(step / warmup_steps, math.sqrt(warmup_steps / step))


def linear_decay_lr(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then linear decay to 0 at
    ``total_steps`` (the budget-aware schedule of Li et al. 2020, "Budgeted Training:
    Rethinking Deep Neural Network Training Under Resource Constraints", which found a linear
    decay to zero by the end of the budget best among the schedules they compared).

    ``total_steps = 0`` means the budget is not known yet: the rate then stays at ``peak``
    after warm-up. For 1-based ``step``; never negative.
    """
    step = max(step, 1)
    if step <= warmup_steps:
        return peak * step / warmup_steps
    if total_steps <= 0:
        return peak
    if total_steps <= warmup_steps:
        return 0.0
    return peak * max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def planned_steps(step: int, elapsed_s: float, budget_s: float) -> int:
    """The number of updates a time budget allows, extrapolated from the rate so far.

    Args:
        step: updates done; elapsed_s: seconds they took, validation and checkpoints
            included (so their share of the time carries over); budget_s: the whole budget.

    Returns:
        ``step`` plus the updates that fit into the remaining seconds at the same rate
        (at least ``step``).
    """
    if step <= 0 or elapsed_s <= 0:
        return step
    remaining = max(budget_s - elapsed_s, 0.0)
    return step + int(remaining / (elapsed_s / step))


def learning_rate(
    cfg: TrainConfig, step: int, end: int, anchor: tuple[int, float] | None = None
) -> float:
    """The learning rate of 1-based update ``step`` under ``cfg.lr_schedule``.

    Args:
        end: the last update of a linear schedule's budget (0 = not known yet).
        anchor: ``(update, rate)`` of a linear schedule's latest time plan: from there the
            rate falls linearly to 0 at ``end`` (so that a re-planned end keeps it
            continuous); ``None``: from the peak at the end of the warm-up
            (:func:`linear_decay_lr`).
    """
    if cfg.lr_schedule != "linear":
        return inverse_sqrt_lr(step, cfg.lr, cfg.warmup_steps)
    if anchor is None:
        return linear_decay_lr(step, cfg.lr, cfg.warmup_steps, end)
    start, rate = anchor
    if end <= start:
        return 0.0
    return rate * min(1.0, max(0.0, (end - step) / (end - start)))


def checkpoint_due(cfg: TrainConfig, step: int, end: int) -> bool:
    """Whether update ``step`` writes a step checkpoint: every ``save_every`` updates, or,
    once a linear schedule's ``end`` is known, at ``keep_checkpoints`` evenly spaced updates
    over its last :data:`AVERAGE_SHARE` (for ``nmt average``: the weights of the low-lr
    tail, not the peak)."""
    end = end if cfg.lr_schedule == "linear" else 0
    if not end:
        return step % cfg.save_every == 0
    keep = cfg.keep_checkpoints
    every = max(1, round(end * AVERAGE_SHARE / max(keep - 1, 1)))
    return 0 <= end - step <= every * (keep - 1) and (end - step) % every == 0


def schedule_notes(cfg: TrainConfig, steps_per_epoch: int) -> list[str]:
    """What a run should be told at its start about its schedule: a warm-up at least as
    long as its step or epoch budget (the peak rate is never reached; a linear schedule
    with ``max_steps`` is refused earlier, by :class:`~nmt.config.TrainConfig`), and where a
    linear schedule keeps its step checkpoints instead of every ``save_every`` updates."""
    notes = []
    end = min((n for n in (cfg.max_steps, cfg.max_epochs * steps_per_epoch) if n), default=0)
    if end and cfg.warmup_steps >= end:
        notes.append(
            f"warning: warmup_steps={cfg.warmup_steps} is not below the {end} updates of this "
            f"run: the learning rate rises all along and never reaches its peak lr={cfg.lr:g}"
            + ("" if cfg.lr_schedule != "linear" else ", and never decays")
            + "; lower --warmup-steps"
        )
    if cfg.lr_schedule == "linear":
        notes.append(
            f"lr_schedule=linear: the {cfg.keep_checkpoints} step checkpoints are spread over "
            f"the last {AVERAGE_SHARE:.0%} of the planned updates (for nmt average) instead of "
            f"written every save_every={cfg.save_every}; resume.pt is still written every "
            f"{cfg.save_every} updates"
        )
    return notes


def budget_reason(cfg: TrainConfig, state: Any) -> str | None:
    """Why training should stop after ``state.step`` updates (``state``: a
    :class:`nmt.train.resume.TrainState`): ``max_steps``, ``max_epochs``, ``max_minutes``, the
    end planned for a linear schedule, or ``patience``; ``None`` while none is reached."""
    c, s = cfg, state
    if c.max_steps and s.step >= c.max_steps:
        return f"reached max_steps={c.max_steps}"
    if c.max_epochs and s.epoch > c.max_epochs:
        return f"reached max_epochs={c.max_epochs}"
    if c.max_minutes and s.elapsed_s >= c.max_minutes * 60:
        return f"reached max_minutes={c.max_minutes:g}"
    if c.lr_schedule == "linear" and s.planned_steps and s.step >= s.planned_steps:
        return (
            f"reached the {s.planned_steps} updates planned for max_minutes="
            f"{c.max_minutes:g} (the learning rate has decayed to 0)"
        )
    if c.patience and s.bad_validations >= c.patience:
        what = METRIC_NAMES[c.patience_metric]
        return f"no {what} improvement in {c.patience} validations (patience)"
    return None
