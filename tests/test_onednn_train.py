"""nmt.model.onednn in training: the oneDNN linear function's forward and gradients equal
F.linear's, the swapped model trains like the plain one, and resume stays bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from skips import skipif
from test_train import run
from torch import nn

from nmt.model.checkpoint import load_weights
from nmt.model.onednn import TrainableOneDNNLinear, available, linear, use_onednn_training

pytestmark = [
    pytest.mark.kernels,
    skipif(not available(), "onednn"),
]


@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (2, 1, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_and_gradients_equal_f_linear(shape: tuple[int, ...], with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    w = torch.randn(96, 48, generator=gen, requires_grad=True)
    b = torch.randn(96, generator=gen, requires_grad=True) if with_bias else None
    grad_y = torch.randn(*shape[:-1], 96, generator=gen)
    params = [p for p in (x, w, b) if p is not None]

    y = linear(x, w, b)
    fast = torch.autograd.grad(y, params, grad_y)
    y_ref = F.linear(x, w, b)
    slow = torch.autograd.grad(y_ref, params, grad_y)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(fast, slow):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    # The backward products read transposed views; a weight with other strides gives the
    # same values (oneDNN honours strides rather than assuming a layout).
    strided = linear(x, w.detach().t().contiguous().t(), b)
    torch.testing.assert_close(strided, y_ref, atol=1e-5, rtol=1e-5)


def test_falls_back_to_f_linear_under_autocast_and_for_other_dtypes() -> None:
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16  # autocast applied: F.linear ran
    assert linear(x.double(), w.double()).dtype == torch.float64


def test_swap_keeps_parameters_and_state_dict(random_model) -> None:  # type: ignore[no-untyped-def]
    model = random_model()
    before = dict(model.named_parameters())
    keys = list(model.state_dict())
    use_onednn_training(model)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert any(isinstance(m, TrainableOneDNNLinear) for m in model.modules())
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert list(model.state_dict()) == keys


def test_training_with_onednn_follows_torch_and_resumes_exactly(
    tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, tiny_train_config
) -> None:
    """12 updates with oneDNN products end within float32 rounding of torch's own path, and
    6 updates + resume to 12 equal 12 straight, bit for bit."""
    model_cfg = tiny_model_config(dropout=0.1)

    def recipe(max_steps: int, onednn: bool):  # type: ignore[no-untyped-def]
        return tiny_train_config(
            max_steps=max_steps, eval_every=1000, save_every=1000, onednn=onednn
        )

    runs = {}
    for name, steps, onednn in [("plain", 12, False), ("fast", 12, True), ("split", 6, True)]:
        runs[name] = run(tmp_path / name, tiny_corpus, spm_model, model_cfg, recipe(steps, onednn))
    run(tmp_path / "split", tiny_corpus, spm_model, model_cfg, recipe(12, True))
    plain = [s.loss for s in runs["plain"].steps]
    fast = [s.loss for s in runs["fast"].steps]
    assert fast == pytest.approx(plain, abs=2e-4)
    straight = load_weights(tmp_path / "fast" / "last.safetensors")
    resumed = load_weights(tmp_path / "split" / "last.safetensors")
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []
