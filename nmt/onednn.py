"""Float32 linear layers through oneDNN, for CPU inference.

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
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from nmt.model import Transformer

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
    model.output_linear = OneDNNLinear(model.embed.weight, None)
    return model
