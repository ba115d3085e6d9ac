"""nmt.train.feed: the updates of a corpus epoch after epoch, and the data wait it counts."""

from __future__ import annotations

import itertools
import time

import torch

from nmt.data.parallel import encode_parallel
from nmt.train.distributed import DistEnv
from nmt.train.feed import UpdateFeed
from nmt.train.resume import TrainState


def test_wait_never_decreases_across_an_epoch_boundary(
    tokenizer, multi30k, tiny_train_config, monkeypatch
) -> None:
    """The trainer logs ``data_wait_share`` from differences of :attr:`UpdateFeed.wait_s`. Each
    epoch has its own prefetcher, whose count starts at 0: ``wait_s`` was the current
    epoch's only, so the first difference of epoch 2 subtracted all of epoch 1's waiting and
    the logged share went negative. It must count every epoch's waiting.

    Batches are built slowly on purpose (20 ms each) and consumed at once, so that every
    update is waited for and epoch 1's total is well above one update's wait.
    """
    data = encode_parallel(
        tokenizer, multi30k("train", "de", 200), multi30k("train", "en", 200), 100
    )
    cfg = tiny_train_config(batch_tokens=1000)
    feed = UpdateFeed(data, cfg, DistEnv(), torch.device("cpu"))
    real = UpdateFeed.collate

    def slow_collate(self, step_batches):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return real(self, step_batches)

    monkeypatch.setattr(UpdateFeed, "collate", slow_collate)
    state = TrainState()
    n = feed.steps_per_epoch + 3
    readings = [(state.epoch, feed.wait_s) for _ in itertools.islice(feed.updates(state), n)]
    assert [epoch for epoch, _ in readings] == [1] * feed.steps_per_epoch + [2] * 3
    waits = [w for _, w in readings]
    assert waits[0] > 0 and all(a <= b for a, b in zip(waits, waits[1:])), waits
