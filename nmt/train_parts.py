"""The parts of a training run that stand apart from the :class:`~nmt.trainer.Trainer` loop.

The autocast dtype (:func:`pick_dtype`), the counters saved in the resume checkpoint
(:class:`TrainState`), the records of a logged update and of a validation
(:class:`StepStats`, :class:`ValidResult`), the observer that receives them
(:class:`TrainObserver`), and the TensorBoard writer. :mod:`nmt.train` re-exports the public
ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nmt.config import TrainConfig
from nmt.errors import ConfigError

if TYPE_CHECKING:
    from nmt.trainer import Trainer


@dataclass
class StepStats:
    """What one logged update reports (losses per target token, natural log)."""

    step: int
    epoch: int
    loss: float
    nll: float
    lr: float
    grad_norm: float
    tgt_tokens_per_s: float
    elapsed_s: float
    skipped: int
    data_wait_share: float = 0.0  # share of the step time spent waiting for batches


@dataclass
class ValidResult:
    """A validation: teacher-forced loss/perplexity and sacreBLEU scores of the search output."""

    step: int
    loss: float
    ppl: float
    bleu: float
    chrf: float
    bleu_signature: str
    best: bool
    elapsed_s: float


class TrainObserver:
    """Receives progress; subclass it to render (the CLI draws a rich progress bar)."""

    def on_start(self, trainer: Trainer) -> None:  # noqa: D102 - hooks are self-explanatory
        pass

    def on_step(self, stats: StepStats) -> None:  # noqa: D102
        pass

    def on_validate(self, result: ValidResult) -> None:  # noqa: D102
        pass

    def on_message(self, text: str) -> None:  # noqa: D102
        pass


@dataclass
class TrainState:
    """Counters saved in the resume checkpoint."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0
    best_bleu: float = -1.0
    bad_validations: int = 0
    elapsed_s: float = 0.0
    skipped_steps: int = 0
    planned_steps: int = 0  # the end of a linear schedule's budget (0 = not known yet)


def open_tensorboard(out_dir: Path):  # type: ignore[no-untyped-def]
    """A TensorBoard writer for ``out_dir/tensorboard``.

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "tensorboard = true needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(str(out_dir / "tensorboard"))


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
