"""nmt.device.pick_dtype: --dtype auto picks bf16 only where it is native."""

from __future__ import annotations

import pytest
import torch

from nmt.config import TrainConfig
from nmt.device import cpu_has_native_bf16, pick_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AUTO = TrainConfig(dtype="auto")


def hardware_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def test_auto_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cpu_has_native_bf16() == (
        hardware_bf16() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    assert pick_dtype(AUTO, CPU) == (torch.bfloat16 if cpu_has_native_bf16() else None)


@pytest.mark.parametrize("isa", ["AVX512_CORE", "avx512_core_vnni", "AVX2"])
@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_auto_is_float32_when_onednn_is_capped_below_bf16(
    monkeypatch: pytest.MonkeyPatch, isa: str, variable: str
) -> None:
    """oneDNN's own check says yes under AVX512_CORE (bf16 emulated); ours must say no."""
    monkeypatch.setenv(variable, isa)
    assert not cpu_has_native_bf16()
    assert pick_dtype(AUTO, CPU) is None
    assert pick_dtype(TrainConfig(dtype="bf16"), CPU) == torch.bfloat16  # asked for: given


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_gpus_without_native_bf16_is_fp16(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert pick_dtype(AUTO, CUDA) == (torch.bfloat16 if native else torch.float16)
    assert asked == [False]  # emulated bf16 (V100, T4) does not count
    assert pick_dtype(TrainConfig(dtype="fp32"), CUDA) is None
