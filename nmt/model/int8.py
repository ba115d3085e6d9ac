"""Int8 linear layers for CPU inference, through oneDNN's int8 matmul in torch.

``--quantization int8`` in the torch engine swaps a model's ``nn.Linear`` layers for
:class:`Int8Linear` (:func:`quantize_int8`): weights quantized once, per output channel and
symmetric; activations quantized at every call, per tensor and asymmetric, to uint8 (dynamic
quantization, Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"); the int8 product and the rescale to float32 with the bias
added are one call of ``torch.ops.onednn.qlinear_pointwise``, the op that torchao's x86 PT2E
flow (``X86InductorQuantizer``) lowers its int8 linear layers to. Plain uint8/int8 tensors go in,
float32 comes out: no quantized tensor types, whose creation functions torch deprecates along
with ``torch.ao.quantization.quantize_dynamic`` (which this replaces).

Why not ``torchao.quantization.quantize_``: in eager mode on CPU, torchao 0.18's
``Int8DynamicActivationInt8WeightConfig`` multiplies with ``torch._int_mm``, 20–50× slower
than float32 on our AVX2 CPU, and ``Int8WeightOnlyConfig`` turns the weight back into float32 at
every call (slower than float32); both are fast only under ``torch.compile``
(docs/benchmarks.md, "int8 in the torch engine").

Weights use 7 bits (−63…63): CPUs without VNNI (AVX2, e.g. our Zen 3) multiply uint8 by int8
with ``vpmaddubsw``, whose sums of two products saturate at 16 bits; 255 × 63 × 2 = 32,130
stays below 32,767, so no product saturates on any x86 CPU (the reason fbgemm quantizes
activations to 7 bits, ``reduce_range``, and oneDNN's "int8 computation nuances"). With 8-bit
weights the error on AVX2 was 5–10× larger. The output projection (tied to the embedding)
stays float32, computed through oneDNN (:func:`nmt.model.onednn.use_onednn`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from nmt.errors import ConfigError
from nmt.model.transformer import Transformer

WEIGHT_MAX = 63  # 7-bit weights: no 16-bit saturation in vpmaddubsw (module docstring)
ACTIVATION_MAX = 255  # uint8 activations
MIN_SCALE = 1e-12  # an all-zero input quantizes to zeros instead of dividing by 0


@functools.cache
def available() -> bool:
    """Whether this torch build has oneDNN's int8 linear op and it computes ``F.linear``
    within int8 rounding (x86 builds do; others raise at :func:`quantize_int8`)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=g) for shape in ((4, 16), (8, 16), (8,)))
        out = Int8Linear(w, b)(x)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.allclose(out, F.linear(x, w, b), atol=0.5))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantization of ``(out, in)`` float weights.

    Returns:
        ``(q, scale)``: ``q`` int8 ``(out, in)`` in ``[-WEIGHT_MAX, WEIGHT_MAX]`` and ``scale``
        float32 ``(out,)``, with ``weight ≈ q * scale[:, None]``.
    """
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=MIN_SCALE) / WEIGHT_MAX
    q = torch.round(weight / scale[:, None]).clamp(-WEIGHT_MAX, WEIGHT_MAX).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with int8 weights and dynamically quantized uint8 activations.

    Args:
        weight: ``(out_features, in_features)`` float; bias: ``(out_features,)`` or None.
            Quantized (:func:`quantize_weight`) and packed once; neither is a parameter.

    Forward: float32 ``(..., in_features)`` → float32 ``(..., out_features)``. The input is
    quantized per call with one scale and zero point for the whole tensor (its min and max,
    widened to include 0), so the error of a row depends on the other rows of the batch.

    Attributes:
        weight_scale: ``(out_features,)`` float32, one scale per output channel.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():
            q, self.weight_scale = quantize_weight(weight)
            self.packed = torch.ops.onednn.qlinear_prepack(q, None)
            self.weight_zero_point = torch.zeros(self.out_features, dtype=torch.int64)
            self.bias = None if bias is None else bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., in_features)`` float32 → ``(..., out_features)`` float32. A row of
        ``x`` holding NaN or inf (an fp16 overflow, a broken input) gives a NaN output row, as
        float32 would, and does not spoil the shared activation scale of the other rows: the
        search then reports that line as a failure instead of the whole batch raising."""
        lo, hi = (float(v) for v in torch.aminmax(x))  # scalars in Python: fewer tensor ops
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = torch.isfinite(x)
            bad_rows = ~finite.all(dim=-1, keepdim=True)
            out = self(x.masked_fill(~finite, 0.0))
            return out.masked_fill(bad_rows, math.nan)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max((hi - lo) / ACTIVATION_MAX, MIN_SCALE)
        zero_point = round(-lo / scale)
        q = x.mul(1.0 / scale).add_(zero_point).round_().clamp_(0, ACTIVATION_MAX)
        return torch.ops.onednn.qlinear_pointwise(
            q.to(torch.uint8), scale, zero_point, self.packed, self.weight_scale,
            self.weight_zero_point, self.bias, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: Transformer) -> Transformer:
    """Swap ``model``'s ``nn.Linear`` layers for :class:`Int8Linear` (in place; returns
    ``model``). The one int8 path of the torch engine (``--quantization int8``: translate,
    score, ensembles, the Python API, through :func:`nmt.decode.translate.for_inference`).
    For a float32 model on CPU in eval mode; the tied output projection is left to the caller.

    Raises:
        ConfigError: this torch build has no oneDNN int8 linear op (x86 builds have it).
    """
    if not available():
        raise ConfigError(
            "--quantization int8 needs torch's oneDNN int8 linear op, which this torch build "
            "lacks (x86 builds have it); translate in float32 or export to CTranslate2 int8"
        )
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, Int8Linear(child.weight, child.bias))
    return model
