"""Learning-rate schedules, each a pure function of the 1-based update number."""

from __future__ import annotations

import math


def inverse_sqrt_lr(step: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then decay with 1/sqrt(step).

    This is Vaswani et al. (2017) eq. 3 with the constant ``d_model^-0.5`` replaced by the
    peak rate: ``lr = peak * min(step / warmup, sqrt(warmup / step))`` for 1-based ``step``.
    """
    step = max(step, 1)
    if warmup_steps == 0:
        return peak / math.sqrt(step)
    return peak * min(step / warmup_steps, math.sqrt(warmup_steps / step))
