"""The CPU companions of ``test_cuda.py``'s training tolerances: no GPU is needed to show that
a check fails a bug, so each check function of ``test_cuda.py`` is fed here a comparison of
two CPU runs, one with a plausible bug injected, and must fail it (tests/README.md). The
one-rank DDP check also runs bug-free on a gloo group, which measures its gap on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_cuda import (
    RESUME_REL,
    assert_first_update_follows,
    assert_one_rank_update_matches,
    assert_resumed_losses_follow,
    make_trainer,
    one_rank_group,
)
from test_train import Recorder

import nmt.train.checkpointing
import nmt.train.loss
import nmt.train.trainer
from nmt.train.run import train

# The DDP comparisons run the two paths' arithmetic (gloo's all-reduce against none).
pytestmark = pytest.mark.kernels


def padding_counted(model, states, labels, label_smoothing):  # type: ignore[no-untyped-def]
    """A wrong mask: the label-smoothed loss over every target position, padding too."""
    logits = model.logits(states.flatten(0, 1)).float()
    loss = torch.nn.functional.cross_entropy(
        logits, labels.flatten(), label_smoothing=label_smoothing, reduction="sum"
    )
    return loss, loss.detach()


def clipped_scaled(monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    """fp16 gradients clipped, and their norm measured, while still multiplied by the loss
    ``scale`` (as if unscale_ came after clipping)."""
    clip = torch.nn.utils.clip_grad_norm_

    def clipping(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> Any:
        params = [p for p in parameters if p.grad is not None]
        for p in params:
            p.grad.mul_(scale)
        norm = clip(params, max_norm, *args, **kwargs)
        for p in params:
            p.grad.div_(scale)
        return norm  # the scaled gradient's norm, as clipped

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clipping)


@pytest.mark.parametrize(
    "dtype, bug, fails",
    [
        ("bf16", "padding-counted", "loss .* beyond .*; gradient norm .* beyond"),
        ("fp16", "clipped-before-unscaling", "gradient norm .* beyond"),
    ],
)
def test_first_update_bounds_fail_a_wrong_mask_or_unscaled_clipping(
    dtype: str,
    bug: str,
    fails: str,
    tmp_path: Path,
    spm_model: Path,
    tiny_corpus,
    tiny_model_config,
    tiny_train_config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The companion of FIRST_LOSS_REL and FIRST_GRAD_NORM_REL: a bf16 first update (autocast
    on the CPU) whose loss also counts the target padding, or an fp16 one whose gradients are
    clipped and measured before unscaling, against float32's first update."""
    model_cfg = tiny_model_config(dropout=0.0)

    def trainer(d: str) -> Any:
        return make_trainer(tmp_path, spm_model, tiny_corpus, model_cfg, tiny_train_config(dtype=d))

    reference, mixed = trainer("fp32"), trainer(dtype)
    batches = reference.collate_step(reference.epoch_steps(1)[0])
    expected = reference.train_step(batches)
    assert expected is not None
    if bug == "padding-counted":
        monkeypatch.setattr(nmt.train.loss, "label_smoothed_loss", padding_counted)
    else:
        assert mixed.scaler.is_enabled()
        clipped_scaled(monkeypatch, mixed.scaler.get_scale())
    with pytest.raises(AssertionError, match=fails):
        assert_first_update_follows(mixed.train_step(batches), expected, dtype)


def test_resume_bound_fails_a_resume_that_leaves_the_rng_state(
    tmp_path: Path,
    spm_model: Path,
    tiny_corpus,
    tiny_model_config,
    tiny_train_config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RESUME_REL's companion: 12 updates straight against 7, stop, resume to 12 (float32,
    dropout on) where the resume restores everything but the RNG state, so that the resumed
    updates draw other dropout masks."""
    model_cfg = tiny_model_config(dropout=0.1, attention_dropout=0.1)

    def run(out: Path, steps: int) -> Recorder:
        recorder = Recorder()
        cfg = tiny_train_config(max_steps=steps, eval_every=1000, save_every=1000)
        train(*tiny_corpus, out, model_cfg, cfg, spm_path=spm_model, observer=recorder)
        return recorder

    straight = run(tmp_path / "straight", 12)
    run(tmp_path / "split", 7)
    load_resume = nmt.train.checkpointing.load_resume

    def keeping_the_rng(*args: Any, **kwargs: Any) -> Any:
        rng = torch.get_rng_state()
        loaded = load_resume(*args, **kwargs)
        torch.set_rng_state(rng)
        return loaded

    monkeypatch.setattr(nmt.train.checkpointing, "load_resume", keeping_the_rng)
    resumed = run(tmp_path / "split", 12)
    assert [s.step for s in resumed.steps] == list(range(8, 13))
    expected = [s.loss for s in straight.steps[7:]]
    for rel in RESUME_REL.values():
        with pytest.raises(AssertionError, match="beyond"):
            assert_resumed_losses_follow([s.loss for s in resumed.steps], expected, rel)


@pytest.mark.parametrize("bug", [None, "padding-counted"])
def test_one_rank_gloo_update_and_its_bound(
    bug: str | None,
    tmp_path: Path,
    spm_model: Path,
    tiny_corpus,
    tiny_model_config,
    tiny_train_config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-rank DDP check of ``test_cuda.py`` on a gloo group on the CPU: the DDP
    trainer's update equals the plain trainer's (its gap on the CPU) and, as its companion,
    fails where the DDP trainer's loss also counts the target padding (a wrong mask)."""
    model_cfg, cfg = tiny_model_config(dropout=0.0), tiny_train_config()
    plain = make_trainer(tmp_path, spm_model, tiny_corpus, model_cfg, cfg)
    batches = plain.collate_step(plain.epoch_steps(1)[0])
    expected = plain.train_step(batches)
    assert expected is not None
    if bug is not None:
        monkeypatch.setattr(nmt.train.loss, "label_smoothed_loss", padding_counted)
    with one_rank_group(monkeypatch, "gloo", torch.device("cpu")) as env:
        ddp = make_trainer(tmp_path, spm_model, tiny_corpus, model_cfg, cfg, dist_env=env)
        assert isinstance(ddp.forward, torch.nn.parallel.DistributedDataParallel)
        result = ddp.train_step(batches)
        if bug is None:
            assert_one_rank_update_matches(result, expected, ddp.model, plain.model)
        else:
            with pytest.raises(AssertionError, match="beyond"):
                assert_one_rank_update_matches(result, expected, ddp.model, plain.model)
