"""nmt.train.resume: what a stop writes and in which order, a process killed in the middle of
writing a checkpoint, and exact resume under bf16 autocast."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model_config, make_tiny_train_config
from test_schedule import StopAt
from test_train import run

from nmt.fileio import KILL_AT_ENV, KILL_POINTS
from nmt.model import checkpoint as ckpt
from nmt.model.checkpoint import load_resume, load_weights
from nmt.train.run import train

TESTS = Path(__file__).resolve().parent


def test_sigterm_writes_resume_pt_before_last_safetensors(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config, monkeypatch
) -> None:
    """resume.pt is what a resume needs (it holds the weights too): a stop on SIGTERM writes it
    first, so that a SIGKILL that follows (torchrun's, 30 s later) cannot take it while
    last.safetensors, a copy of the weights, is being written."""
    written: list[str] = []
    real = ckpt.atomic_write

    def recorded(path, write):  # type: ignore[no-untyped-def]
        written.append(Path(path).name)
        real(path, write)

    monkeypatch.setattr(ckpt, "atomic_write", recorded)
    cfg = tiny_train_config(max_steps=1000, eval_every=1000, save_every=1000)
    observer = StopAt(3)
    _, reason = train(*tiny_corpus, tmp_path / "run", tiny_model_config(), cfg,
                      spm_path=spm_model, observer=observer)  # fmt: skip
    assert reason == "interrupted by signal SIGTERM"
    assert written == [ckpt.RESUME_FILE, "last.safetensors"]
    assert load_resume(tmp_path / "run" / ckpt.RESUME_FILE)["state"]["step"] == 3


KILL_RECIPE = dict(eval_every=1000, save_every=2)  # resume.pt (and last.safetensors) every 2


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory, tiny_corpus, spm_model: Path) -> Path:
    """A run folder stopped at step 4 (its last resume.pt and last.safetensors are step 4's)."""
    out = tmp_path_factory.mktemp("four") / "run"
    cfg = make_tiny_train_config(max_steps=4, **KILL_RECIPE)
    train(*tiny_corpus, out, make_tiny_model_config(), cfg, spm_path=spm_model)
    return out


@pytest.fixture(scope="module")
def eight_steps(tmp_path_factory, tiny_corpus, spm_model: Path) -> dict[str, torch.Tensor]:
    """The weights of the same run trained to step 8 without a stop."""
    out = tmp_path_factory.mktemp("eight") / "run"
    cfg = make_tiny_train_config(max_steps=8, **KILL_RECIPE)
    train(*tiny_corpus, out, make_tiny_model_config(), cfg, spm_path=spm_model)
    return load_weights(out / "last.safetensors")


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from conftest import make_tiny_model_config, make_tiny_train_config
from nmt.train.run import train
train(sys.argv[2], sys.argv[3], sys.argv[4], make_tiny_model_config(),
      make_tiny_train_config(max_steps=8, eval_every=1000, save_every=2), spm_path=sys.argv[5])
"""


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.parametrize("name", [ckpt.RESUME_FILE, "last.safetensors"])
def test_a_process_killed_while_writing_a_checkpoint_leaves_the_previous_one(
    tmp_path: Path, tiny_corpus, spm_model: Path, four_steps: Path, eight_steps, name, point
) -> None:
    """A child process continues the step-4 run towards step 8 and kills itself with SIGKILL
    (``NMT_TEST_KILL_AT``, :mod:`nmt.fileio`) at its first write of ``name`` (step 6's): in
    the middle of the data, after the data but before the fsync, or after the fsync but
    before the rename. What was there before still loads (resume.pt is written before
    last.safetensors, so a kill in the latter finds step 6's resume.pt complete), and the
    run resumes to step 8 with the weights of a run that was never stopped."""
    out = tmp_path / "run"
    shutil.copytree(four_steps, out)
    # The child computes steps 5-6 when the kill comes after resume.pt: with this process's
    # thread count, so that its float sums are the ones the uninterrupted run made here.
    threads = str(torch.get_num_threads())
    env = {**os.environ, KILL_AT_ENV: f"{name}:{point}", "OMP_NUM_THREADS": threads}
    env["PYTHONPATH"] = str(TESTS.parent)
    args = [str(TESTS), *map(str, tiny_corpus), str(out), str(spm_model)]
    child = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    (left,) = out.glob(f".{name}.*.tmp")  # the temporary file of the write that was killed
    if point == "mid-write":
        assert 0 < left.stat().st_size < (four_steps / name).stat().st_size
    assert (out / "last.safetensors").read_bytes() == (four_steps / "last.safetensors").read_bytes()
    load_weights(out / "last.safetensors")
    expected_step = 4 if name == ckpt.RESUME_FILE else 6
    assert load_resume(out / ckpt.RESUME_FILE)["state"]["step"] == expected_step

    cfg = make_tiny_train_config(max_steps=8, **KILL_RECIPE)
    _, reason = train(*tiny_corpus, out, make_tiny_model_config(), cfg, spm_path=spm_model)
    assert reason == "reached max_steps=8"
    resumed = load_weights(out / "last.safetensors")
    assert [k for k in eight_steps if not torch.equal(eight_steps[k], resumed[k])] == []


def test_bf16_training_on_the_cpu_resumes_exactly(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config
) -> None:
    """bf16 autocast trains on every CPU (oneDNN computes bf16 products natively with
    AVX512-BF16 or AMX and emulates them elsewhere, e.g. on an AVX2-only Zen 3), and a run
    stopped by SIGTERM at step 4 and resumed to 10 ends with the weights of 10 straight steps.

    Tolerance: none (bit for bit). Autocast rounds each product's inputs to bf16, but the
    master weights, gradients and Adam moments stay float32 and resume.pt stores them
    exactly, and the same kernels on the same shapes with the same thread count give the
    same bits, emulated or not: a difference would be state that the resume lost (dropout's
    RNG, the batch position, the optimizer), not bf16 rounding.
    """
    model_cfg = tiny_model_config(dropout=0.1, attention_dropout=0.1)
    cfg = tiny_train_config(dtype="bf16", max_steps=10, eval_every=1000, save_every=1000)
    run(tmp_path / "straight", tiny_corpus, spm_model, model_cfg, cfg)
    split = tmp_path / "split"
    first = StopAt(4)
    trainer, reason = train(*tiny_corpus, split, model_cfg, cfg, spm_path=spm_model,
                            observer=first)  # fmt: skip
    assert reason == "interrupted by signal SIGTERM" and [s.step for s in first.steps] == [
        1,
        2,
        3,
        4,
    ]
    assert trainer.amp_dtype == torch.bfloat16
    with trainer.autocast():  # the products really are bf16
        assert trainer.model.logits(torch.zeros(1, 1, model_cfg.d_model)).dtype == torch.bfloat16
    second = run(split, tiny_corpus, spm_model, model_cfg, cfg)
    assert [s.step for s in second.steps] == list(range(5, 11))
    assert all(math.isfinite(s.loss) for s in first.steps + second.steps)
    expected = load_weights(tmp_path / "straight" / "last.safetensors")
    resumed = load_weights(split / "last.safetensors")
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
