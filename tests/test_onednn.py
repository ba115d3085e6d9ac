"""nmt.model.onednn: oneDNN linear layers give the same numbers and log-probabilities as torch's own
float32 path (MKL), and translations that differ only where two tokens were within float32
rounding of each other (``agreement.py``; STYLE, "Tests that can fail" 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from agreement import assert_float32_agree, translate_recorded
from skips import skipif
from test_model import cached_log_probs, full_log_probs, padded_src, random_tgt
from torch import nn

from nmt.config import DecodeConfig
from nmt.decode.translate import Translator, for_inference
from nmt.model.onednn import OneDNNLinear, available, use_onednn

pytestmark = [
    skipif(not available(), "onednn"),
    pytest.mark.kernels,
]


@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (1, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_equals_f_linear(shape: tuple[int, ...], with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 48, generator=gen)
    b = torch.randn(96, generator=gen) if with_bias else None
    x = torch.randn(*shape, generator=gen)
    out = OneDNNLinear(w, b)(x)
    assert out.shape == (*shape[:-1], 96)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_linear_bound_fails_a_weight_packed_in_bf16() -> None:
    """Companion of the 1e-5 bound above (tests/README.md): a weight rounded to bfloat16 when
    packed for oneDNN (a precision bug that leaves outputs plausible) moves the outputs by
    about 1e-2, and the check fails."""
    gen = torch.Generator().manual_seed(0)
    w, b, x = (
        torch.randn(96, 48, generator=gen),
        torch.randn(96, generator=gen),
        torch.randn(7, 48, generator=gen),
    )
    want = F.linear(x, w, b)
    kernels = float((OneDNNLinear(w, b)(x) - want).abs().max())
    bug = float((OneDNNLinear(w.bfloat16().float(), b)(x) - want).abs().max())
    print(f"oneDNN vs F.linear: kernels {kernels:.2g}, bug {bug:.2g}")
    assert kernels <= 1e-5 * (1 + float(want.abs().max())) < bug


def test_swapped_model_decodes_as_before(random_model) -> None:
    """Every linear layer and the tied output projection are swapped, and full and cached
    decoding give the log-probabilities of the unswapped model."""
    model, plain = random_model(), random_model()
    use_onednn(model)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert isinstance(model.output_linear, OneDNNLinear)
    src, tgt_in = padded_src([5, 2, 7]), random_tgt(3, 6)
    with torch.inference_mode():
        expected = full_log_probs(plain, src, tgt_in)
        torch.testing.assert_close(full_log_probs(model, src, tgt_in), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            cached_log_probs(model, src, tgt_in), expected, atol=1e-5, rtol=0
        )


def test_for_inference_uses_onednn_only_for_cpu_float32(random_model) -> None:
    assert isinstance(for_inference(random_model()).output_linear, OneDNNLinear)
    assert for_inference(random_model(), onednn=False).output_linear is None
    assert for_inference(random_model(), dtype="bf16").output_linear is None
    quantized = for_inference(random_model(), quantize="int8")  # float32 output projection
    assert isinstance(quantized.output_linear, OneDNNLinear)
    assert not any(isinstance(m, OneDNNLinear) for m in quantized.decoder_layers.modules())
    assert for_inference(random_model(), quantize="int8", onednn=False).output_linear is None


@pytest.mark.parametrize("beam_size", [1, 4])
def test_translations_equal_torch_linear(tiny_run: Path, multi30k, beam_size: int) -> None:  # type: ignore[no-untyped-def]
    lines = multi30k("test_2016_flickr", "de", 40)
    decode = DecodeConfig(beam_size=beam_size)
    onednn = Translator.load(tiny_run, decode, device="cpu", workers=1)
    plain = Translator.load(tiny_run, decode, device="cpu", workers=1, onednn=False)
    assert isinstance(onednn.model.output_linear, OneDNNLinear)
    assert plain.model.output_linear is None
    (_, fast), (_, slow) = translate_recorded(onednn, lines), translate_recorded(plain, lines)
    assert_float32_agree(plain.model, beam_size, fast, slow)
