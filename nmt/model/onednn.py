"""Float32 linear layers through oneDNN on CPU: for inference, and optionally for training.

torch computes a float32 ``nn.Linear`` on CPU with MKL's sgemm. On the AMD EPYC CPU of our
benchmarks, MKL reached 34–95 GFLOP/s single-threaded on a ``small`` decoder step's products,
and oneDNN's float32 matmul 51–208 GFLOP/s: 1.5–4.0× faster for all but the smallest
(``benchmarks/linear_kernels.py``, docs/benchmarks.md). torch ships oneDNN too: it is what
torch uses for bf16 and what ``torch.compile`` calls for CPU linear layers
(``torch.ops.mkldnn._linear_pointwise``), and CTranslate2 uses it on CPUs other than Intel's.
:func:`use_onednn` swaps a model's linear layers, and its output projection tied to the
embedding, for :class:`OneDNNLinear`, which keeps its weight packed in oneDNN's blocked
layout. The results equal ``F.linear``'s up to float32 rounding (another summation order): on
Multi30k test_2016_flickr the translations were identical (docs/benchmarks.md).

The swapped model is for inference only: the packed weights have no gradients, are not
parameters, and stay on the CPU. :func:`available` checks the op once and says no where this
torch build lacks it (then nothing is swapped).

Training in float32 on CPU uses oneDNN too: :func:`use_onednn_training` makes a model's
linear layers and its tied output projection call :func:`linear`, an autograd function whose
forward product and both backward products (``grad_x = grad_y W``, ``grad_W = grad_y^T x``)
run through the same oneDNN op on the live (unpacked) weights. The parameters stay
``nn.Linear``'s own, so the optimizer, DDP, checkpoints and ``torch.compile`` see the same
model. Under autocast, off the CPU or for other dtypes, :func:`linear` is ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from nmt.model.transformer import Transformer

PACK_ROWS = 64  # rows oneDNN picks the weight layout for; any number of rows works


@functools.cache
def available() -> bool:
    """Whether this torch build has oneDNN's linear op and it agrees with ``F.linear``."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
        out = OneDNNLinear(w, b)(x)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.allclose(out, F.linear(x, w, b), atol=1e-5))


class OneDNNLinear(nn.Module):
    """``y = x W^T + b`` through oneDNN's float32 matmul, with ``W`` packed once.

    Args:
        weight: ``(out_features, in_features)`` float32; bias: ``(out_features,)`` or None.
            Both are copied (the packed weight is not a parameter of this module).

    Forward: ``(..., in_features)`` → ``(..., out_features)``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(
                weight.detach().float().contiguous(), PACK_ROWS
            )
            self.bias = None if bias is None else bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def with_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> OneDNNLinear:
        """The same kind of layer for another weight: what
        :meth:`nmt.model.transformer.Transformer.output_rows` packs the rows of a vocabulary
        shortlist with, once per search."""
        return OneDNNLinear(weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def use_onednn(model: Transformer, layers: bool = True) -> Transformer:
    """Swap ``model``'s tied output projection and, with ``layers``, its ``nn.Linear`` layers
    for :class:`OneDNNLinear` (in place; returns ``model``). For a model with float32 weights
    on CPU, in eval mode (``layers=False`` for one whose linear layers are quantized); a no-op
    where :func:`available` is False.
    """
    if not available():
        return model
    if layers:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if type(child) is nn.Linear:
                    setattr(module, name, OneDNNLinear(child.weight, child.bias))
    model.output_linear = OneDNNLinear(model.embed.weight, model.output_bias)
    return model


def _onednn_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x W^T`` for ``x`` ``(..., in)`` and ``W`` ``(out, in)``, either possibly strided
    (oneDNN reads the transposed views used by the backward products without a copy)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


class _LinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` with the forward and both backward products in oneDNN."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_y: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_x = grad_w = grad_b = None
        if needs[0]:
            grad_x = _onednn_mm(grad_y, weight.t())  # (..., out) @ (out, in) -> (..., in)
        flat_grad = grad_y.reshape(-1, grad_y.size(-1))  # (rows, out)
        if needs[1]:  # (out, rows) @ (rows, in): MKL was as fast or faster here
            grad_w = flat_grad.t().mm(x.reshape(-1, x.size(-1)))
        if ctx.has_bias and needs[2]:  # type: ignore[attr-defined]
            grad_b = flat_grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with its float32 CPU products (forward and backward) in oneDNN.

    Args:
        x: ``(..., in_features)``; weight: ``(out_features, in_features)``;
            bias: ``(out_features,)`` or None.

    Returns:
        ``(..., out_features)``, equal to ``F.linear(x, weight, bias)`` up to float32
        rounding (another summation order). Falls back to ``F.linear`` off the CPU, for
        dtypes other than float32, under autocast, and where :func:`available` is False.
    """
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
        or not available()
    ):
        return F.linear(x, weight, bias)
    return _LinearFunction.apply(x, weight, bias)  # type: ignore[no-any-return]


class TrainableOneDNNLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state-dict keys) computed by :func:`linear`.

    Forward: ``(..., in_features)`` → ``(..., out_features)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    @classmethod
    def wrap(cls, layer: nn.Linear) -> TrainableOneDNNLinear:
        """A layer sharing ``layer``'s weight and bias ``Parameter`` objects."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight, new.bias = layer.weight, layer.bias
        return new


def use_onednn_training(model: Transformer) -> Transformer:
    """Make ``model``'s ``nn.Linear`` layers and tied output projection compute with
    :func:`linear` (in place; returns ``model``), keeping the same ``Parameter`` objects, so
    it can be done before or after building the optimizer. A no-op where :func:`available`
    is False.
    """
    if not available():
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, TrainableOneDNNLinear.wrap(child))
    return model
