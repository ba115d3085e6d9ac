"""What a training run reports, and where: the records of a logged update
(:class:`StepStats`), of a validation (:class:`ValidResult`) and of the start of a run
(:class:`RunStart`), the :class:`TrainObserver` that receives them (the CLI draws a progress
bar from them; the library prints nothing), and :class:`RunLog`, which appends them to
``metrics.jsonl`` and, when asked, TensorBoard. :mod:`nmt.train.run` re-exports the public ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmt.errors import ConfigError


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
    """A validation: teacher-forced loss/perplexity and sacreBLEU scores of the search output.

    For a multilingual run, ``directions`` holds each direction's ``{"bleu", "chrf"}``, and
    ``bleu``/``chrf`` are their means (what ``best`` follows)."""

    step: int
    loss: float
    ppl: float
    bleu: float
    chrf: float
    bleu_signature: str
    best: bool
    elapsed_s: float
    directions: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunStart:
    """Where a run starts (0 for a new run, the saved counters on resume) and its budgets.

    Attributes:
        step / elapsed_s: updates done and seconds spent before this start.
        max_steps / max_epochs / max_minutes: the budgets (0 = none).
        steps_per_epoch: updates per epoch on this data, batch size and process count.
    """

    step: int
    elapsed_s: float
    max_steps: int
    max_epochs: int
    max_minutes: float
    steps_per_epoch: int


class TrainObserver:
    """Receives progress; subclass it to render (the CLI draws a rich progress bar)."""

    def on_start(self, start: RunStart) -> None:  # noqa: D102 - hooks are self-explanatory
        pass

    def on_step(self, stats: StepStats) -> None:  # noqa: D102
        pass

    def on_validate(self, result: ValidResult) -> None:  # noqa: D102
        pass

    def on_message(self, text: str) -> None:  # noqa: D102
        pass


class RunLog:
    """Appends records to ``out_dir/metrics.jsonl`` (one JSON object per line) and, with
    ``tensorboard``, their numbers to ``out_dir/tensorboard``. Disabled (``enabled=False``)
    on every process but the main one.

    Raises:
        ConfigError: ``tensorboard`` without the ``tensorboard`` package installed.
    """

    def __init__(self, out_dir: Path, tensorboard: bool = False, enabled: bool = True):
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tensorboard = open_tensorboard(out_dir) if tensorboard and enabled else None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a ``type`` and a ``step`` key, then numbers and strings)."""
        if not self.enabled:
            return
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "best"):
                    self.tensorboard.add_scalar(f"{record['type']}/{key}", value, record["step"])
            self.tensorboard.flush()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Close the TensorBoard writer (``metrics.jsonl`` is closed after every record)."""
        if self.tensorboard is not None:
            self.tensorboard.close()


def check_tensorboard() -> None:
    """Check that TensorBoard logs can be written (called before a run writes anything).

    Raises:
        ConfigError: the ``tensorboard`` package is not installed (the flag named).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard (tensorboard = true in the config file) needs the tensorboard "
            "package: pip install tensorboard, or drop the flag"
        ) from None


def open_tensorboard(out_dir: Path):  # type: ignore[no-untyped-def]
    """A TensorBoard writer for ``out_dir/tensorboard``.

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """
    check_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out_dir / "tensorboard"))
