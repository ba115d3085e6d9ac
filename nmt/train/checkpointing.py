"""The checkpoints of a training run: ``resume.pt`` with the batch order it belongs to, and
the step checkpoints kept for averaging. :class:`RunCheckpoints` holds these methods of
:class:`~nmt.train.trainer.Trainer`; the files are :mod:`nmt.train.resume`'s and
:mod:`nmt.model.checkpoint`'s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nmt.config import TrainConfig
from nmt.data.batching import BATCHING_VERSION
from nmt.data.parallel import Corpus
from nmt.errors import ConfigError
from nmt.model import checkpoint as ckpt
from nmt.model.transformer import Transformer
from nmt.train.distributed import DistEnv
from nmt.train.log import TrainObserver
from nmt.train.resume import (
    TrainState,
    changed_data_order,
    corpus_fingerprint,
    load_resume,
    save_resume,
)


class RunCheckpoints:
    """The checkpoint methods of :class:`~nmt.train.trainer.Trainer`, which sets the
    attributes below."""

    out_dir: Path
    cfg: TrainConfig
    state: TrainState
    dist: DistEnv
    observer: TrainObserver
    model: Transformer
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_data: Corpus
    update_tokens: int
    corpus_fingerprint: str | None

    def data_order(self) -> dict[str, int | str]:
        """What decides the order of the batches, and so what the saved position in an
        epoch means: batch size, seed, batches per update (processes × accum: update ``i``
        takes the plan's batches ``i × W × A`` to ``(i + 1) × W × A - 1`` whichever way they
        are shared out) and the corpus."""
        c = self.cfg
        if self.corpus_fingerprint is None:  # once: the corpus does not change in a run
            self.corpus_fingerprint = corpus_fingerprint(self.train_data)
        return {
            "batching": BATCHING_VERSION,
            "batch_tokens": c.batch_tokens,
            "seed": c.seed,
            "batches_per_update": self.dist.world_size * c.accum,
            "corpus": self.corpus_fingerprint,
        }

    def save_resume(self) -> None:
        """Write ``resume.pt`` and ``last.safetensors`` (:func:`nmt.train.resume.save_resume`; all
        ranks must call it), with :meth:`data_order`."""
        save_resume(
            self.out_dir,
            self.model,
            self.optimizer,
            self.scaler,
            self.state,
            self.dist,
            {
                "data_order": self.data_order(),
                "update": {
                    "update_tokens": self.update_tokens,
                    "accum": self.cfg.accum,
                    "world_size": self.dist.world_size,
                },
            },
        )

    def load_resume(self, path: Path, reset_data_position: bool = False) -> None:
        """Restore everything :meth:`save_resume` wrote.

        Args:
            reset_data_position: when the batch order differs from the saved run's (see
                :meth:`data_order`), continue the weights and optimizer from the start of a
                new epoch instead of refusing.

        Raises:
            ConfigError: the batch order differs (the field, both values and the ways out
                named) and ``reset_data_position`` is not set.
            CheckpointError: an unreadable checkpoint.
        """
        self.state, saved = load_resume(path, self.model, self.optimizer, self.scaler, self.dist)
        changed = changed_data_order(saved, self.data_order(), path, self.state.epoch)
        if changed and not reset_data_position:
            raise ConfigError(changed)
        if changed:
            if self.state.batch_in_epoch:
                self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            self.observer.on_message(
                f"{changed.split(';')[0]}: continuing from the start of epoch {self.state.epoch}"
            )

    def step_checkpoint(self) -> Path:
        """``checkpoints/step-N.safetensors`` of the current step."""
        return self.out_dir / "checkpoints" / f"step-{self.state.step:08d}.safetensors"

    def save_step_checkpoint(self) -> None:
        """Write ``checkpoints/step-N.safetensors`` and keep the newest ``keep_checkpoints``."""
        if not self.dist.is_main:
            return
        path = self.step_checkpoint()
        ckpt.save_weights(path, self.model, self.state.step)
        for old in sorted(path.parent.glob("step-*.safetensors"))[: -self.cfg.keep_checkpoints]:
            old.unlink()
