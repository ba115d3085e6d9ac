"""What the training loop consumes: this rank's updates, epoch after epoch, from the saved
position on, padded and built ahead in a background thread.

The batch order comes from :class:`nmt.data.batching.EpochPlanner` (the same plan on every rank,
each rank taking every world_size-th batch); :class:`UpdateFeed` turns it into padded
:class:`~nmt.data.parallel.Batch` lists, ``accum`` per update, and keeps the resume counters
(``epoch``, ``batch_in_epoch``) in step with what it hands out.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from nmt.config import TrainConfig
from nmt.data.batching import EpochPlanner, RankSteps
from nmt.data.parallel import Batch, Corpus, Prefetcher, collate
from nmt.errors import ConfigError
from nmt.train.distributed import DistEnv
from nmt.train.resume import TrainState

PREFETCH_STEPS = 4  # updates whose batches are built ahead in a background thread


class UpdateFeed:
    """This rank's updates of a training corpus.

    Args:
        train_data: the training pairs (in memory or memory-mapped).
        cfg: batch size (``batch_tokens``, padded tokens), ``seed`` and ``accum``.
        dist: this process's rank and the number of processes.
        device: where training runs (batches are pinned for a CUDA device).

    Raises:
        ConfigError: an epoch holds fewer batches than one update needs
            (``world_size × accum``), so training could never take a step.
    """

    def __init__(self, train_data: Corpus, cfg: TrainConfig, dist: DistEnv, device: torch.device):
        self.train_data, self.device = train_data, device
        self.planner = EpochPlanner(  # the batch cuts are computed once, for every epoch
            train_data.src_lens,
            train_data.tgt_lens,
            cfg.batch_tokens,
            cfg.seed,
            dist.rank,
            dist.world_size,
            cfg.accum,
        )
        self.steps_per_epoch = self.planner.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ConfigError(too_few_batches(len(train_data), cfg, dist.world_size))
        self.prefetched: Prefetcher[list[Batch]] | None = None
        self.waited_before_s = 0.0  # the finished epochs' waits (each has its own Prefetcher)

    @property
    def wait_s(self) -> float:
        """Seconds the loop has waited for batches since this feed started, over every epoch
        (never decreasing, so that differences between two readings are waits)."""
        current = self.prefetched.wait_s if self.prefetched is not None else 0.0
        return self.waited_before_s + current

    def steps(self, epoch: int) -> RankSteps:
        """This rank's updates of ``epoch``, in order: each a list of ``accum`` batches of
        example indices.

        The order depends only on the seed, the epoch and the rank: every rank takes every
        world_size-th batch, and all ranks get the same number of updates so that they stay
        in lockstep (the few batches left over at the end of an epoch are skipped). The next
        epoch's plan is built in the background meanwhile (:class:`EpochPlanner`).
        """
        return self.planner.steps(epoch)

    def collate(self, step_batches: list[list[int]]) -> list[Batch]:
        """The padded batches of one update (``accum`` lists of example indices), on the CPU
        (pinned when training on CUDA, so the copy to the GPU can overlap)."""
        batches = [collate(self.train_data, b) for b in step_batches]
        if self.device.type == "cuda":
            batches = [
                Batch(
                    b.src.pin_memory(),
                    b.tgt_in.pin_memory(),
                    b.tgt_out.pin_memory(),
                    b.n_tgt_tokens,
                )
                for b in batches
            ]
        return batches

    def updates(self, state: TrainState) -> Iterator[list[Batch]]:
        """This rank's updates from ``state``'s position on, epoch after epoch, built
        :data:`PREFETCH_STEPS` ahead in a background thread; ``state.batch_in_epoch`` and
        ``state.epoch`` count the updates handed out, this one included (so that a resume
        checkpoint saved after training it starts with the next; a consumer that does not
        train an update it was handed takes one off ``batch_in_epoch``)."""
        while True:
            steps = self.steps(state.epoch)
            first = state.batch_in_epoch
            ahead = (self.collate(steps[i]) for i in range(first, len(steps)))
            with Prefetcher(ahead, PREFETCH_STEPS) as prefetched:
                self.prefetched = prefetched
                for batches in prefetched:
                    state.batch_in_epoch += 1
                    yield batches
            self.waited_before_s += prefetched.wait_s
            self.prefetched = None
            state.epoch += 1
            state.batch_in_epoch = 0


def too_few_batches(pairs: int, cfg: TrainConfig, world_size: int) -> str:
    """Why an epoch has no update: one update takes ``world_size × accum`` batches, and
    ``pairs`` pairs of ``batch_tokens`` do not fill that many."""
    need = world_size * cfg.accum
    return (
        f"an epoch of {pairs:,} training pairs at batch_tokens={cfg.batch_tokens} makes fewer "
        f"than the {need} batches one update needs ({world_size} process(es) × accum="
        f"{cfg.accum}), so training could never take a step: lower --accum (or "
        "--update-tokens) or --batch-tokens, use fewer processes, or train on more data"
    )
