"""nmt.train.schedule and the budget it follows: the linear decay, the time plan made once and kept
in resume.pt, and step checkpoints spread over the end of the budget."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from test_train import Recorder, run

from nmt.config import TrainConfig
from nmt.errors import ConfigError
from nmt.train.run import StepStats, train
from nmt.train.schedule import linear_decay_lr, planned_steps


def test_linear_decay() -> None:
    peak = 1e-3
    lrs = [linear_decay_lr(step, peak, 10, 110) for step in range(1, 111)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[9] == pytest.approx(peak)  # warm-up
    assert max(lrs) == lrs[9]
    assert lrs[59] == pytest.approx(peak / 2)  # half-way through the decay: half the peak
    assert lrs[-1] == 0.0 and linear_decay_lr(500, peak, 10, 110) == 0.0  # never negative
    assert all(a > b for a, b in zip(lrs[9:], lrs[10:]))
    assert linear_decay_lr(50, peak, 10, 0) == peak  # end not known yet: stay at the peak
    assert linear_decay_lr(5, peak, 0, 10) == pytest.approx(peak / 2)  # no warm-up


def test_planned_steps_extrapolates_the_rate() -> None:
    assert planned_steps(100, 60.0, 600.0) == 1000  # 0.6 s per update, 540 s left
    assert planned_steps(100, 700.0, 600.0) == 100  # already over the budget
    assert planned_steps(0, 0.0, 600.0) == 0


def test_linear_schedule_needs_a_budget() -> None:
    with pytest.raises(ConfigError, match="max_steps, max_epochs or max_minutes"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ConfigError, match="inverse_sqrt, linear"):
        TrainConfig(lr_schedule="cosine", max_steps=10)


def test_a_warm_up_as_long_as_the_run_is_refused_or_warned_about(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config
) -> None:
    """The default 500 warm-up updates with --max-steps 300: the peak rate is never reached
    and the linear schedule never decays. Refused where the config shows it (linear with
    max_steps); warned about at the start otherwise (an inverse_sqrt smoke test)."""
    with pytest.raises(ConfigError, match=r"warmup_steps=500 is not below max_steps=300"):
        TrainConfig(lr_schedule="linear", max_steps=300)
    cfg = tiny_train_config(max_steps=3, warmup_steps=50, eval_every=3, save_every=3)
    recorder = run(tmp_path / "run", tiny_corpus, spm_model, tiny_model_config(), cfg)
    warning = "warning: warmup_steps=50 is not below the 3 updates"
    assert any(m.startswith(warning) for m in recorder.messages)


def records(out: Path, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_max_steps_budget_decays_to_zero_and_spreads_checkpoints(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config
) -> None:
    cfg = tiny_train_config(
        max_steps=40, warmup_steps=4, lr=2e-3, lr_schedule="linear", log_every=1, save_every=100
    )
    recorder = run(tmp_path / "run", tiny_corpus, spm_model, tiny_model_config(), cfg)
    assert any("instead of written every save_every=100" in m for m in recorder.messages)
    lrs = [s.lr for s in recorder.steps]
    assert lrs == pytest.approx([linear_decay_lr(k, 2e-3, 4, 40) for k in range(1, 41)])
    assert lrs[-1] == 0.0
    # 5 checkpoints over the last 20% of the 40 updates: every round(40 * 0.2 / 4) = 2
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == [f"step-{n:08d}.safetensors" for n in (32, 34, 36, 38, 40)]


class StopAt(Recorder):
    """Records the updates and sends this process SIGTERM after update ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop_step = step

    def on_step(self, stats: StepStats) -> None:
        super().on_step(stats)
        if stats.step == self.stop_step:
            os.kill(os.getpid(), signal.SIGTERM)  # train() turns it into a clean stop


def test_time_budget_is_planned_once_and_kept_on_resume(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config
) -> None:
    """The plan is made at the first validation after warm-up and, on resume, read back from
    resume.pt instead of being made again; the rate follows it exactly."""
    out, peak = tmp_path / "run", 1e-3
    cfg = tiny_train_config(
        max_minutes=60, max_steps=0, lr=peak, warmup_steps=6, eval_every=10,
        lr_schedule="linear", log_every=1, save_every=100,
    )  # fmt: skip
    steps = []
    for stop in (14, 24):  # the stop is seen before the next update
        observer = StopAt(stop)
        train(*tiny_corpus, out, tiny_model_config(), cfg, spm_path=spm_model, observer=observer)
        steps += observer.steps
    assert [s.step for s in steps] == list(range(1, 25))
    plans = records(out, "plan")
    assert [p["step"] for p in plans] == [10]  # once, at the first validation after warm-up
    planned = plans[0]["planned_steps"]
    assert planned > 100  # an hour holds far more updates than the first 10 took (even on
    # a loaded machine: the plan was 782 with four test runs sharing 2 cores)
    assert torch.load(out / "resume.pt", weights_only=True)["state"]["planned_steps"] == planned
    expected = [linear_decay_lr(k, peak, 6, planned if k > 10 else 0) for k in range(1, 25)]
    assert [s.lr for s in steps] == pytest.approx(expected, rel=1e-12)
    assert steps[-1].lr < peak  # decaying towards the planned end
