"""nmt.train.schedule and the budget it follows: the linear decay, the time plan re-made at every
validation and kept in resume.pt, and step checkpoints spread over the end of the budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import Recorder, run

from nmt.config import TrainConfig
from nmt.errors import ConfigError
from nmt.model.checkpoint import load_weights
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


def fake_time(monkeypatch: pytest.MonkeyPatch, seconds) -> None:  # type: ignore[no-untyped-def]
    """Run the training loop on a clock that reads ``seconds(step)`` after ``step`` updates
    (a feed of a chosen speed, without real waits), and skip validation: the plan is made at
    validation steps all the same, and these tests are about the schedule."""
    from nmt.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "clock", lambda self: seconds(self.state.step))
    monkeypatch.setattr(Trainer, "validate", lambda self: None)


def test_the_time_plan_follows_a_feed_that_changes_speed(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Updates take 1 s, then 0.5 s from update 20, then 1 s again from update 60; the budget
    is 2 minutes. A plan made once at the start (120 updates) ended the decay at 100 s; re-planned
    at every validation from the latest speed, the decay ends when the budget does (within
    2%: here at 120 s, update 140), and the rate stays continuous through every re-plan."""

    def seconds(step: int) -> float:
        return min(step, 20) + 0.5 * (min(max(step, 20), 60) - 20) + max(step - 60, 0)

    fake_time(monkeypatch, seconds)
    peak, out = 1e-3, tmp_path / "run"
    cfg = tiny_train_config(
        max_minutes=2, max_steps=0, lr=peak, warmup_steps=4, eval_every=5, lr_schedule="linear",
        save_every=1000, log_every=1000, batch_tokens=300,
    )  # fmt: skip
    recorder = run(out, tiny_corpus, spm_model, tiny_model_config(), cfg)
    lrs = [s.lr for s in recorder.steps]
    ended = next(s.step for s in recorder.steps if s.step > 4 and s.lr == 0.0)
    assert abs(seconds(ended) - 120) <= 0.02 * 120, (ended, seconds(ended))
    assert recorder.steps[-1].step == ended  # and training stopped there
    assert all(b <= a for a, b in zip(lrs[4:], lrs[5:]))  # no jump up at a re-plan ...
    assert max(a - b for a, b in zip(lrs[4:], lrs[5:])) < peak / 40  # ... nor down
    plans = records(out, "plan")
    assert [p["step"] for p in plans] == list(range(5, ended + 1, 5))
    assert {p["planned_steps"] for p in plans} == {120, 220, 140}  # each speed's extrapolation


def test_a_changed_max_minutes_on_resume_is_re_planned(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Stopped at update 12 of a 1-minute plan (1 s per update), resumed with
    --max-minutes 2: the plan is made again at once for the new budget (it was ignored, the
    stored plan winning), the rate continuing from where it was."""
    fake_time(monkeypatch, float)
    out, peak = tmp_path / "run", 1e-3
    values = dict(
        max_steps=0, lr=peak, warmup_steps=4, eval_every=5, lr_schedule="linear", log_every=1000,
        save_every=1000, batch_tokens=300,
    )  # fmt: skip
    first = StopAt(12)  # the stop is seen before the next update
    train(*tiny_corpus, out, tiny_model_config(), tiny_train_config(max_minutes=1, **values),
          spm_path=spm_model, observer=first)  # fmt: skip
    second = StopAt(14)
    train(*tiny_corpus, out, tiny_model_config(), tiny_train_config(max_minutes=2, **values),
          spm_path=spm_model, observer=second)  # fmt: skip
    assert [s.step for s in first.steps + second.steps] == list(range(1, 15))
    assert any("max_minutes changed from 1 to 2" in m for m in second.messages)
    plans = [(p["step"], p["planned_steps"]) for p in records(out, "plan")]
    assert plans == [(5, 60), (10, 60), (12, 120)]
    lr12 = first.steps[-1].lr
    assert lr12 == pytest.approx(peak * (60 - 12) / (60 - 5))  # decaying from update 5
    assert second.steps[0].lr == pytest.approx(lr12 * (120 - 13) / (120 - 12), rel=1e-12)


CRASH_AT_THE_PLAN = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from conftest import make_tiny_model_config, make_tiny_train_config
from nmt.train.run import train
from nmt.train.trainer import Trainer
Trainer.clock = lambda self: float(self.state.step)
Trainer.validate = lambda self: None
save = Trainer.save_resume
def save_then_die(self):
    save(self)
    if sys.argv[6] == "die" and self.state.step == 6:  # the plan step's save: die at once
        os.kill(os.getpid(), signal.SIGKILL)
Trainer.save_resume = save_then_die
cfg = make_tiny_train_config(**{CFG})
train(sys.argv[2], sys.argv[3], sys.argv[4], make_tiny_model_config(), cfg, spm_path=sys.argv[5])
"""


def test_a_crash_right_after_the_plan_steps_save_resumes_exactly(
    tmp_path: Path, tiny_corpus, spm_model: Path
) -> None:
    """The plan step (6: the first validation after the warm-up) is also a save step. Its
    resume.pt was written before the plan, so a run killed there resumed at the peak rate
    until the next validation planned again. Now it holds the plan: a child killed with
    SIGKILL right after that save and resumed ends as the uninterrupted run (bit for bit)."""
    # The children's clock reads 1 s per update: 30 updates in the half minute.
    values = dict(
        max_minutes=0.5, max_steps=0, lr=1e-3, warmup_steps=4, eval_every=6,
        lr_schedule="linear", save_every=6, log_every=1000, batch_tokens=300,
    )  # fmt: skip
    script = CRASH_AT_THE_PLAN.replace("{CFG}", repr(values))

    def child(out: Path, mode: str) -> subprocess.CompletedProcess:
        # Every run in a fresh process of its own: the same threads and kernels for all three
        # (this pytest process may carry state from earlier tests), so they agree bit for bit.
        return subprocess.run(
            [sys.executable, "-c", script, str(Path(__file__).parent), *map(str, tiny_corpus),
             str(out), str(spm_model), mode],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    done = child(straight, "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(straight / "resume.pt", weights_only=True)["state"]["step"] == 30
    died = child(crashed, "die")
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    state = torch.load(crashed / "resume.pt", weights_only=True)["state"]
    assert (state["step"], state["planned_steps"]) == (6, 30)  # the plan is in it
    done = child(crashed, "run")  # resumed
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (load_weights(folder / "last.safetensors") for folder in (straight, crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)
