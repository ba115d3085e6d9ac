"""nmt.device.pick_dtype: --dtype auto picks bf16 only where it is native."""

from __future__ import annotations

import pytest
import torch

from nmt.config import TrainConfig
from nmt.device import cpu_has_native_bf16, pick_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AUTO = TrainConfig(dtype="auto")


def fake_cpu(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, onednn: bool) -> None:
    """What cpuinfo (through ``torch.cpu``) and oneDNN report, as on another CPU."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "onednn", "picked"),
    [
        (True, False, True, torch.bfloat16),  # Zen 4, Zen 5, Cooper Lake
        (False, True, True, torch.bfloat16),  # AMX without AVX512-BF16 reported
        (False, False, True, None),  # Skylake/Cascade Lake: oneDNN emulates bf16
        (False, False, False, None),  # Zen 3 (AVX2)
        (True, False, False, None),  # oneDNN built without bf16
    ],
)
def test_auto_follows_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch,
    avx512_bf16: bool,
    amx: bool,
    onednn: bool,
    picked: torch.dtype | None,
) -> None:
    fake_cpu(monkeypatch, avx512_bf16, amx, onednn)
    assert pick_dtype(AUTO, CPU) is picked
    assert cpu_has_native_bf16() == (picked is not None)
    assert pick_dtype(TrainConfig(dtype="fp32"), CPU) is None


@pytest.mark.parametrize("native", [True, False])
def test_auto_trains_in_bf16_autocast_only_where_native_and_keeps_float32_weights(
    monkeypatch: pytest.MonkeyPatch,
    native: bool,
    tiny_corpus,  # type: ignore[no-untyped-def]
    spm_model,  # type: ignore[no-untyped-def]
    tiny_model_config,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """What a trainer does with ``--dtype auto`` on a CPU reported with and without native
    bf16: its forward pass computes in bfloat16 (autocast) or float32, and its weights, the
    ones an update changes and a checkpoint saves, stay float32 either way."""
    from nmt.data.parallel import encode_parallel, read_parallel
    from nmt.data.tokenizer import Tokenizer
    from nmt.train.trainer import Trainer

    fake_cpu(monkeypatch, native, False, native)
    tokenizer = Tokenizer(spm_model)
    data = encode_parallel(tokenizer, *read_parallel(tiny_corpus[0], "de", "en"), 50)
    cfg = TrainConfig(dtype="auto", device="cpu", batch_tokens=500, onednn=False)
    trainer = Trainer(tmp_path, tiny_model_config(), cfg, tokenizer, data, data, ([], []))
    src = torch.tensor([[5, 6, 7, 2]])
    with trainer.autocast():
        memory, mask = trainer.model.encode(src)
        logits = trainer.model.logits(trainer.model.decode(src[:, :2], memory, mask))
    assert logits.dtype == (torch.bfloat16 if native else torch.float32)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("isa", ["AVX512_CORE", "avx512_core_vnni", "AVX2"])
@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_auto_is_float32_when_onednn_is_capped_below_bf16(
    monkeypatch: pytest.MonkeyPatch, isa: str, variable: str
) -> None:
    """oneDNN's own check says yes under AVX512_CORE (bf16 emulated); ours must say no, on a
    CPU reported with native bf16 (faked: so that the cap is what is tested on every CPU)."""
    fake_cpu(monkeypatch, True, False, True)
    assert cpu_has_native_bf16()
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
