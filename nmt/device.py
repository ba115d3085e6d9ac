"""Where and in which dtype to compute: the device (:func:`resolve_device`), the training
autocast dtype (:func:`pick_dtype`, with the CPU check :func:`cpu_has_native_bf16`) and
TF32 for float32 products on CUDA (:func:`set_tf32`)."""

from __future__ import annotations

import os

import torch

from nmt.config import TrainConfig
from nmt.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` as given.

    Raises:
        ConfigError: another name (``gpu``), or CUDA where torch sees no CUDA device.
    """
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name, colon, index = text.partition(":")
    if not (text == "cpu" or name == "cuda" and (not colon or index.isdigit())):
        raise ConfigError(f"device {text!r}: choose one of auto, cpu, cuda, cuda:N")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {text!r}: torch sees no CUDA device here (its CUDA build: "
            f"{torch.version.cuda or 'none, a CPU-only torch'}); use --device cpu or auto"
        )
    return torch.device(text)


# oneDNN ISAs (ONEDNN_MAX_CPU_ISA values) below AVX512_CORE_BF16: no native bf16 dot products.
ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matrix products natively on this CPU: the CPU has AVX512-BF16
    or AMX (cpuinfo, through ``torch.cpu``), oneDNN is not capped below AVX512_CORE_BF16 by
    ``ONEDNN_MAX_CPU_ISA``/``DNNL_MAX_CPU_ISA``, and oneDNN reports bf16 support.

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` alone is not enough: it is also true on
    AVX-512 CPUs without AVX512-BF16 (Skylake/Cascade Lake Xeons; ``ONEDNN_MAX_CPU_ISA=
    AVX512_CORE`` on a Zen 4 shows it), where bf16 is emulated and slower than float32.
    """
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if cap.upper() in ISAS_WITHOUT_BF16:
        return False
    return bool(hardware and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.dtype`` on ``device``; ``None`` means plain float32.

    ``fp16`` comes with a gradient scaler (Micikevicius et al. 2018). ``auto`` picks bf16,
    which has float32's range and needs no scaler, only where the hardware computes it
    natively: on a CPU, see :func:`cpu_has_native_bf16` (there bf16 training measured 1.3×
    float32's tokens/s, docs/benchmarks.md); on a GPU, where
    ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and newer), else
    fp16 with the scaler (V100, T4). Elsewhere ``auto`` is float32.
    """
    if cfg.dtype == "fp32":
        return None
    if cfg.dtype == "fp16":
        return torch.float16
    if cfg.dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def set_tf32(device: torch.device, enabled: bool) -> None:
    """On a CUDA ``device``, allow (or forbid) TF32 tensor-core products for float32 work:
    ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` (process
    wide, as torch keeps them). TF32 rounds the inputs of a product to a 10-bit mantissa and
    accumulates in float32 (NVIDIA Ampere and newer; older GPUs ignore it). Nothing changes
    on other devices."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
