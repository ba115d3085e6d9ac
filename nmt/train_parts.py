"""The parts of a training run that stand apart from the :class:`~nmt.trainer.Trainer` loop.

The counters saved in the resume checkpoint
(:class:`TrainState`), the records of a logged update and of a validation
(:class:`StepStats`, :class:`ValidResult`), the observer that receives them
(:class:`TrainObserver`), and the TensorBoard writer. :mod:`nmt.train` re-exports the public
ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
