"""When training stops and how long a linear schedule runs: the budgets of
:class:`~nmt.train.trainer.Trainer` (steps, epochs, a signal, and ``max_minutes`` re-planned as
a number of updates from the wall clock).

:class:`TimeBudget` holds the trainer's methods for them; the formulas are
:mod:`nmt.train.schedule`'s.
"""

from __future__ import annotations

import signal
import time

import torch

from nmt.config import TrainConfig
from nmt.train.distributed import DistEnv, sum_across
from nmt.train.log import RunLog, TrainObserver
from nmt.train.resume import TrainState
from nmt.train.schedule import budget_reason, learning_rate, planned_steps


class TimeBudget:
    """The stopping and time-budget methods of :class:`~nmt.train.trainer.Trainer`, which
    sets the attributes below."""

    cfg: TrainConfig
    state: TrainState
    dist: DistEnv
    device: torch.device
    observer: TrainObserver
    run_log: RunLog
    steps_per_epoch: int
    stop_signal: int | None
    loop_start: tuple[float, float]

    # --- stopping -----------------------------------------------------------------------
    def out_of_budget(self) -> str | None:
        """Why training should stop now (a budget or patience, :func:`nmt.train.schedule.
        budget_reason`, or a signal), or ``None``."""
        reason = budget_reason(self.cfg, self.state)
        if reason is None and self.stop_signal is not None:
            reason = f"interrupted by signal {signal.Signals(self.stop_signal).name}"
        return reason

    def check_stop(self, tokens: int = 0) -> tuple[str | None, int]:
        """Whether to stop before the next update (agreed by all ranks: any rank's reason
        stops all) and that update's target tokens summed over ranks."""
        reason = self.out_of_budget()
        if not self.dist.enabled:
            return reason, tokens
        total, stops = sum_across(
            [float(tokens), float(reason is not None)], self.dist, self.device
        )
        if stops and reason is None:
            reason = "stopped together with another process"
        return reason, int(total)

    # --- the schedule's budget ----------------------------------------------------------
    def clock(self) -> float:
        """Seconds of a monotonic wall clock (a method, so that tests can slow time down)."""
        return time.monotonic()

    def count_time(self) -> None:
        """Set ``state.elapsed_s``: the seconds before this start plus the wall-clock time
        since the loop began (:meth:`run`)."""
        start, before = self.loop_start
        self.state.elapsed_s = before + self.clock() - start

    def budget_steps(self) -> int:
        """The last update of a linear schedule: the smallest of ``max_steps``, ``max_epochs``
        × updates per epoch and the plan for ``max_minutes`` (0 = not known yet)."""
        c, s = self.cfg, self.state
        ends = [n for n in (c.max_steps, c.max_epochs * self.steps_per_epoch, s.planned_steps) if n]
        return min(ends, default=0)

    def decay_anchor(self) -> tuple[int, float] | None:
        """``(update, learning rate)`` the linear decay runs from since the last time plan
        (``None`` before one: from the end of the warm-up at the peak rate)."""
        s = self.state
        return (s.plan_step, s.plan_lr) if s.plan_step else None

    def plan_time_budget(self) -> None:
        """(Re-)plan ``max_minutes`` as a number of updates, at every validation after the
        warm-up: the seconds left divided by rank 0's time per update since the last plan
        (the whole run's before the first; validation and checkpoints included), shared with
        every rank. The decay restarts from the current rate (it stays continuous) towards
        the new end; the plan is kept in ``resume.pt``.

        Re-planning follows the wall clock, so the decay ends when the time does even when
        updates get faster or slower as the run goes (a plan made once ended 10% early in
        ``make demo``).
        """
        c, s = self.cfg, self.state
        lr_now = learning_rate(c, s.step, self.budget_steps(), self.decay_anchor())
        recent = s.step > s.plan_step > 0 and s.elapsed_s > s.plan_elapsed_s
        since = (s.plan_step, s.plan_elapsed_s) if recent else (0, 0.0)
        plan = planned_steps(
            s.step - since[0], s.elapsed_s - since[1], c.max_minutes * 60 - since[1]
        )
        plan += since[0]
        shared = sum_across(
            [float(plan if self.dist.is_main else 0), s.elapsed_s if self.dist.is_main else 0.0],
            self.dist,
            self.device,
        )
        s.planned_steps, s.plan_step, s.plan_lr = int(shared[0]), s.step, lr_now
        s.plan_elapsed_s, s.plan_minutes = shared[1], c.max_minutes
        self.run_log.write({"type": "plan", "step": s.step, "planned_steps": s.planned_steps})
        per_update = (s.elapsed_s - since[1]) / max(s.step - since[0], 1)
        self.observer.on_message(
            f"time budget: {s.planned_steps} updates fit into max_minutes={c.max_minutes:g} "
            f"at {per_update:.2f} s per update lately; the learning rate decays linearly from "
            f"{lr_now:.2e} to 0 by then"
        )

    def replan_changed_budget(self) -> None:
        """On resume with another ``max_minutes`` than the one planned for: re-plan at once
        from the new budget (or, with none left, decay towards the step or epoch budget),
        the rate continuing from where the run stopped."""
        c, s = self.cfg, self.state
        self.observer.on_message(
            f"max_minutes changed from {s.plan_minutes:g} to {c.max_minutes:g} since the last "
            "plan: re-planning the linear decay"
        )
        if not c.max_minutes:
            lr_now = learning_rate(c, s.step, self.budget_steps(), self.decay_anchor())
            s.planned_steps, s.plan_minutes = 0, 0.0
            s.plan_step, s.plan_lr, s.plan_elapsed_s = s.step, lr_now, s.elapsed_s
            return
        self.plan_time_budget()
