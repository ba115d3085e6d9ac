"""Data-parallel training through torchrun with the gloo backend on CPU.

Two processes train, validate, checkpoint and resume: the resumed run ends with the weights of
an uninterrupted one, bit for bit. Two processes against one (two numeric paths, marked
``kernels``) are compared where they do the same arithmetic: 2 processes × accum 1 against
1 process × accum 2 over the same batches, weights within DDP_WEIGHT_TOL, a bound that a wrong
all-reduce divisor exceeds (its companion injects it, through ``tests/bugged_nmt.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.model.checkpoint import RESUME_FILE, load_resume, load_weights

STEPS = 24
# 2 processes × accum 1 against 1 process × accum 2, 12 updates, dropout 0, float32: the
# largest weight difference. Measured 0 (gloo sums two ranks' gradients exactly here; Zen 3);
# the mean of the processes' means (a wrong all-reduce divisor) gave 5.3e-3 (tests/README.md).
DDP_WEIGHT_TOL = 1e-5


def nmt_train(
    out: Path,
    train: Path,
    valid: Path,
    steps: int,
    procs: int,
    batch_tokens: int,
    *extra: str,
    bug: str | None = None,
):
    """Run ``nmt train`` (under torchrun when ``procs`` > 1) with the test recipe and
    ``extra`` options (``--eval-every`` among them replaces the recipe's: an option given
    twice is an error), with ``bug`` (``tests/bugged_nmt.py``) injected when given; returns
    the completed process."""
    program = (
        ["-m", "cli"] if bug is None else [str(Path(__file__).with_name("bugged_nmt.py")), bug]
    )
    launcher = [sys.executable, *program]
    if procs > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
            *program,
        ]
    args = [
        "train",
        "--train",
        str(train),
        "--valid",
        str(valid),
        "--output",
        str(out),
        "--preset",
        "tiny",
        "--vocab-size",
        "500",
        "--max-steps",
        str(steps),
        *(() if "--eval-every" in extra else ("--eval-every", "12")),
        "--save-every",
        "12",
        "--batch-tokens",
        str(batch_tokens),
        "--lr",
        "3e-3",
        "--warmup-steps",
        "10",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def valid_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "valid"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, multi30k, corpus_writer) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ddp-data")
    train = corpus_writer(
        folder / "train", multi30k("train", "de", 1500), multi30k("train", "en", 1500)
    )
    valid = corpus_writer(folder / "valid", multi30k("val", "de", 40), multi30k("val", "en", 40))
    return train, valid


def test_two_gloo_processes_train_validate_and_resume(corpus, tmp_path):
    train, valid = corpus
    run = tmp_path / "ddp"
    nmt_train(run, train, valid, STEPS // 2, procs=2, batch_tokens=1024)
    state = load_resume(run / RESUME_FILE)
    assert state["state"]["step"] == STEPS // 2 and state["world_size"] == 2
    assert len(state["rng"]) == 2  # each rank's RNG state is kept for an exact resume
    nmt_train(run, train, valid, STEPS, procs=2, batch_tokens=1024)  # continues the run
    assert load_resume(run / RESUME_FILE)["state"]["step"] == STEPS
    # The same as not stopping (float32 on CPU; gloo sums two ranks' gradients exactly).
    straight = tmp_path / "straight"
    nmt_train(straight, train, valid, STEPS, procs=2, batch_tokens=1024)
    resumed, expected = (load_weights(r / "last.safetensors") for r in (run, straight))
    assert resumed.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(resumed[k], expected[k])] == []
    ddp = valid_records(run)
    assert [r["step"] for r in ddp] == [12, 24]
    uniform = torch.log(torch.tensor(500.0)).item()  # loss of a uniform guess
    assert all(r["loss"] < uniform - 0.5 for r in ddp)  # it learned
    assert [r["loss"] for r in ddp] == [r["loss"] for r in valid_records(straight)]


NO_DROPOUT = ("--dropout", "0", "--eval-every", "100")


@pytest.fixture(scope="module")
def one_process_accum_2(corpus, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of 1 process × accum 2 after 12 updates of 1024-token batches, dropout 0."""
    out = tmp_path_factory.mktemp("one-process") / "run"
    nmt_train(out, *corpus, 12, 1, 1024, *NO_DROPOUT, "--accum", "2")
    return load_weights(out / "last.safetensors")


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"2 processes against 1: largest weight difference {worst:.2e} (tol {DDP_WEIGHT_TOL})")
    return worst


@pytest.mark.kernels
def test_two_processes_take_the_per_token_mean_over_the_global_batch(
    corpus, tmp_path, one_process_accum_2
):
    """2 processes × accum 1 make the same updates as 1 process × accum 2 over the same
    batches (dropout 0, float32): the gradient is the mean over all target tokens of the
    global batch, not the mean of each process's mean."""
    nmt_train(tmp_path / "two", *corpus, 12, 2, 1024, *NO_DROPOUT)
    assert load_resume(tmp_path / "two" / RESUME_FILE)["state"]["step"] == 12
    two = load_weights(tmp_path / "two" / "last.safetensors")
    assert largest_difference(two, one_process_accum_2) < DDP_WEIGHT_TOL


@pytest.mark.kernels
def test_ddp_bound_fails_a_mean_of_means(corpus, tmp_path, one_process_accum_2):
    """DDP_WEIGHT_TOL's companion: each process divides by its own tokens (a wrong all-reduce
    divisor)."""
    nmt_train(tmp_path / "two", *corpus, 12, 2, 1024, *NO_DROPOUT, bug="mean_of_means")
    two = load_weights(tmp_path / "two" / "last.safetensors")
    assert largest_difference(two, one_process_accum_2) > DDP_WEIGHT_TOL


@pytest.fixture(scope="module")
def update_runs(corpus, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """12 updates of --update-tokens 2048 at --batch-tokens 1024 (dropout 0, every update
    logged): ``one`` on one process (accum 2), ``two`` on two (accum 1)."""
    train, valid = corpus
    folder = tmp_path_factory.mktemp("update-tokens")
    config = folder / "log.toml"
    config.write_text("[train]\nlog_every = 1\n", encoding="utf-8")
    recipe = ("--eval-every", "100", "--config", str(config), *UPDATE_RECIPE)
    return {
        name: (folder / name, nmt_train(folder / name, train, valid, 12, procs, 1024, *recipe))
        for name, procs in (("one", 1), ("two", 2))
    }


UPDATE_RECIPE = ("--dropout", "0", "--update-tokens", "2048")


def test_update_tokens_makes_the_same_updates_on_one_and_two_processes_and_resumes_across(
    corpus, update_runs, tmp_path
):
    """--update-tokens 2048 at --batch-tokens 1024 is accum 2 on one process and accum 1 on
    two: the same plan batches in every update, so the same updates (dropout 0, float32). A
    run started on one process resumes on two (processes × accum unchanged) and ends where
    the uninterrupted run ends.

    Tolerance: the two paths add the same float32 gradients in two ways (one buffer, or
    gloo's sum of two), which came out bit for bit equal here on CPU; another reduction order
    (NCCL's ring) would differ by ~1e-7 relative per update, and through Adam at lr 3e-3 over
    12 updates 1e-5 bounds that, as for the --accum test above.
    """
    train, valid = corpus
    (one_dir, _), (two_dir, _) = update_runs["one"], update_runs["two"]
    saved = load_resume(one_dir / RESUME_FILE)
    assert saved["update"] == {"update_tokens": 2048, "accum": 2, "world_size": 1}
    assert load_resume(two_dir / RESUME_FILE)["update"]["accum"] == 1
    recipe = ("--eval-every", "100", *UPDATE_RECIPE)
    nmt_train(tmp_path / "moved", train, valid, 6, 1, 1024, *recipe)
    nmt_train(tmp_path / "moved", train, valid, 12, 2, 1024, *recipe)  # resumed on two
    moved = load_resume(tmp_path / "moved" / RESUME_FILE)
    assert (moved["state"]["step"], moved["update"]["world_size"]) == (12, 2)
    one = load_weights(one_dir / "last.safetensors")
    for other in (two_dir, tmp_path / "moved"):
        weights = load_weights(other / "last.safetensors")
        assert weights.keys() == one.keys()
        worst = max(float((weights[k] - one[k]).abs().max()) for k in one)
        assert worst < 1e-5, f"{other.name}: largest weight difference {worst:.2e}"


def test_two_processes_log_once_and_log_the_global_mean_loss(update_runs):
    """A 2-process run prints its start-up lines once (rank 0), and its logged training
    loss is the mean over both processes' target tokens: the one-process run of the same
    updates logs the same losses (rank 0's share alone is the loss of half of each update's
    batches, not the update's)."""
    (one_dir, one_done), (two_dir, two_done) = update_runs["one"], update_runs["two"]
    for line in ("training pairs from", "update_tokens=2,048: accum 1 on each of 2"):
        assert two_done.stderr.count(line) == 1, two_done.stderr[-3000:]
    assert one_done.stderr.count("update_tokens=2,048: accum 2 on each of 1") == 1

    def losses(run: Path) -> list[float]:
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]

    one, two = losses(one_dir), losses(two_dir)
    assert len(one) == len(two) == 12
    assert two == pytest.approx(one, rel=1e-5)
