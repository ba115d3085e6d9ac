"""Token-based batching: which examples form each batch of an epoch.

Batches hold at most ``batch_tokens`` padded tokens and are cut from examples sorted by
length, then shuffled, so that little compute is spent on padding (fairseq's
``batch_by_size``, OpenNMT-py's buckets). Everything here is numpy over ``(n,)`` length
arrays, so that a 10M-pair corpus is planned in seconds and little memory:

- :class:`BatchLayout` is the part that does not depend on the seed: the examples sorted by
  (target length, source length), the runs of equal lengths, and where the batches are cut.
  Ties have equal lengths, so the cuts, and hence the number of batches, are the same for
  every seed: they are computed once per run.
- :class:`BatchPlan` is one epoch: the layout's order with each run of equal lengths shuffled
  (what a shuffle before a stable sort gives), and a shuffled batch order. It holds three
  arrays, no per-example Python objects.
- :class:`RankSteps` is one rank's share of an epoch, grouped into updates; every rank
  computes the same plan and materialises only its own batches, one update at a time.
- :class:`EpochPlanner` hands out epochs and builds the next one in a background thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

import numpy as np

# The version of the batch order: a run resumed from a checkpoint of another version would
# continue in another order (nmt.train.resume.changed_data_order refuses it). 2: numpy plans.
BATCHING_VERSION = 2

SORT_CHUNK = 1 << 18  # examples sorted at a time by stable_order (a few MB of work arrays)
MAX_BINS = 1 << 24  # larger keys: np.argsort instead of counting


def _smallest_uint(largest: int) -> type[np.unsignedinteger]:
    return np.uint16 if largest < 2**16 else np.uint32 if largest < 2**32 else np.uint64


def stable_order(key: np.ndarray) -> np.ndarray:
    """``(n,)`` indices that sort ``key`` stably, as ``np.argsort(key, kind="stable")`` but
    int32 (below 2**31 examples) and built by counting, chunk by chunk: the result is the
    only array of the corpus's size (argsort's is int64, plus an int64 work buffer: 16 bytes
    per example instead of 4, 160 MB more at 10M examples).

    Args:
        key: ``(n,)`` non-negative integers.
    """
    n = len(key)
    order = np.empty(n, dtype=_index_dtype(n))
    bins = int(key.max(initial=0)) + 1
    if bins > MAX_BINS:
        order[:] = np.argsort(key, kind="stable")
        return order
    counts = np.zeros(bins, dtype=np.int64)
    for start in range(0, n, SORT_CHUNK):
        counts += np.bincount(key[start : start + SORT_CHUNK], minlength=bins)
    next_pos = np.cumsum(counts) - counts  # where each key's next example goes
    for start in range(0, n, SORT_CHUNK):
        part = key[start : start + SORT_CHUNK]
        arg = np.argsort(part, kind="stable")
        part_sorted = part[arg]
        # Rank of each example among the chunk's examples of its key, in order.
        rank = np.arange(len(part)) - np.searchsorted(part_sorted, part_sorted, side="left")
        order[next_pos[part_sorted] + rank] = arg + start
        next_pos += np.bincount(part, minlength=bins)
    return order


def cut_batches(widths: np.ndarray, batch_tokens: int) -> np.ndarray:
    """Greedy cuts of a sequence of examples into batches of at most ``batch_tokens`` padded
    tokens: a batch takes examples while ``count * max(width) <= batch_tokens`` (an example
    wider than that forms a batch of its own).

    One loop step per batch, not per example: the product ``count * running max`` grows with
    the count, so the examples a batch takes are a prefix of a window of at most
    ``batch_tokens // widths[start]`` examples, found with one cumulative maximum.

    Args:
        widths: ``(n,)`` positive int padded widths, in batching order.

    Returns:
        ``(n_batches + 1,)`` int64 offsets: batch ``k`` is ``widths[bounds[k]:bounds[k + 1]]``.
    """
    n = len(widths)
    bounds = [0]
    start = 0
    while start < n:
        window = widths[start : start + max(1, batch_tokens // int(widths[start]))]
        running = np.maximum.accumulate(window).astype(np.int64)
        fits = np.arange(1, len(window) + 1) * running <= batch_tokens
        start += max(1, int(np.count_nonzero(fits)))
        bounds.append(start)
    return np.asarray(bounds, dtype=np.int64)


def _index_dtype(n: int) -> type[np.signedinteger]:
    return np.int32 if n < 2**31 else np.int64


class BatchLayout:
    """The seed-independent part of batching a corpus (see the module docstring).

    Args:
        src_lens / tgt_lens: ``(n,)`` lengths in tokens (no BOS/EOS), any integer type.
        batch_tokens: padded tokens per batch, counted as ``count * max(src_len, tgt_len)+1``.

    Attributes:
        order: ``(n,)`` int32 (int64 above 2**31 examples) example indices sorted by
            (target length, source length), ties by index.
        runs: ``(n_runs + 1,)`` int64 offsets into ``order`` of the runs of equal
            (target, source) lengths.
        bounds: ``(n_batches + 1,)`` int64 offsets into ``order`` of the batches.

    Raises:
        ValueError: the two length arrays differ in size.
    """

    def __init__(
        self,
        src_lens: Sequence[int] | np.ndarray,
        tgt_lens: Sequence[int] | np.ndarray,
        batch_tokens: int,
    ):
        src, tgt = np.asarray(src_lens), np.asarray(tgt_lens)
        if src.shape != tgt.shape:
            raise ValueError(f"{len(src)} source lengths but {len(tgt)} target lengths")
        n = len(src)
        key, base = self._sort_key(src, tgt)
        del src, tgt
        self.order = stable_order(key)  # stable: the same order on every rank
        key = key[self.order]
        runs = np.flatnonzero(key[1:] != key[:-1]) + 1
        self.runs = np.concatenate([[0], runs, [n]]).astype(np.int64)
        widths = key // base  # the target length; the source length is key % base
        np.maximum(widths, key % base, out=widths)
        del key
        widths += 1  # (n,) padded widths: + EOS on the source, + BOS/EOS on the target
        self.bounds = cut_batches(widths, batch_tokens)
        self.batch_tokens = batch_tokens

    @staticmethod
    def _sort_key(src: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, int]:
        """``(n,)`` integers ordered as (tgt_len, src_len), ``tgt_len * base + src_len``, in as
        few bytes as they fit; and ``base``."""
        base = int(src.max(initial=0)) + 1
        dtype = _smallest_uint((int(tgt.max(initial=0)) + 1) * base)
        key = tgt.astype(dtype)  # in place from here: one array of the corpus's size
        key *= dtype(base)
        np.add(key, src, out=key, casting="unsafe")
        return key, base

    def __len__(self) -> int:
        """The number of batches (the same for every seed)."""
        return len(self.bounds) - 1

    def plan(self, seed: int) -> BatchPlan:
        """One epoch's :class:`BatchPlan`: each run of equal lengths shuffled in place of a
        shuffle before the sort (the same distribution), and the batch order shuffled.
        Deterministic for a given ``seed``."""
        rng = np.random.default_rng(seed % 2**63)
        order = self.order.copy()
        starts, ends = self.runs[:-1].tolist(), self.runs[1:].tolist()
        for start, end in zip(starts, ends):  # one step per distinct length pair
            if end - start > 1:
                rng.shuffle(order[start:end])
        return BatchPlan(order, self.bounds, rng.permutation(len(self)))


class BatchPlan:
    """One epoch's batches: a sequence of ``(count,)`` index arrays, one per batch, in the
    order they are trained on.

    Args:
        order: ``(n,)`` example indices, sorted by length; bounds: ``(n_batches + 1,)``
            offsets of the batches into it; perm: ``(n_batches,)`` the batch order.
    """

    def __init__(self, order: np.ndarray, bounds: np.ndarray, perm: np.ndarray):
        self.order, self.bounds, self.perm = order, bounds, perm

    def __len__(self) -> int:
        return len(self.perm)

    def __getitem__(self, k: int) -> np.ndarray:
        """``(count,)`` example indices of the ``k``-th batch trained on (a view).

        Raises:
            IndexError: ``k`` outside ``[-len, len)``.
        """
        b = int(self.perm[k])
        return self.order[self.bounds[b] : self.bounds[b + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[k] for k in range(len(self)))

    def share(
        self,
        rank: int,
        world_size: int,
        accum: int,
        on_first_use: Callable[[], object] | None = None,
    ) -> RankSteps:
        """The updates of rank ``rank`` of ``world_size`` (see :class:`RankSteps`)."""
        return RankSteps(self, rank, world_size, accum, on_first_use)


def usable_steps(n_batches: int, world_size: int, accum: int) -> int:
    """Updates per epoch on each rank: every rank takes every ``world_size``-th batch and
    ``accum`` of them per update; all ranks get the same count so that they stay in
    lockstep, and the last ``n_batches % (world_size * accum)`` batches are left out."""
    return n_batches // (world_size * accum)


class RankSteps(Sequence[list[list[int]]]):
    """One rank's updates of an epoch: update ``i`` holds the batches
    ``rank + (i * accum + j) * world_size`` of the plan, ``j < accum``.

    Items are lists of ``accum`` lists of example indices, built when asked for (a few
    hundred ints each), so the share costs nothing until it is trained on.
    ``on_first_use`` is called when the first item is asked for.
    """

    def __init__(
        self,
        plan: BatchPlan,
        rank: int,
        world_size: int,
        accum: int,
        on_first_use: Callable[[], object] | None = None,
    ):
        if not 0 <= rank < world_size or accum < 1:
            raise ValueError(f"rank={rank} of world_size={world_size}, accum={accum}")
        self.plan, self.rank, self.world_size, self.accum = plan, rank, world_size, accum
        self.steps = usable_steps(len(plan), world_size, accum)
        self.on_first_use = on_first_use

    def __len__(self) -> int:
        return self.steps

    def batch_numbers(self, i: int) -> list[int]:
        """The plan positions of update ``i``'s batches."""
        first = i * self.accum
        return [self.rank + (first + j) * self.world_size for j in range(self.accum)]

    def __getitem__(self, i: int) -> list[list[int]]:  # type: ignore[override]
        """The ``accum`` batches of update ``i`` (lists of example indices).

        Raises:
            IndexError: ``i`` outside ``[-len, len)``.
        """
        if not -self.steps <= i < self.steps:
            raise IndexError(f"update {i} of {self.steps}")
        start, self.on_first_use = self.on_first_use, None
        if start is not None:
            start()
        return [self.plan[k].tolist() for k in self.batch_numbers(i % self.steps)]


def epoch_seed(seed: int, epoch: int) -> int:
    """The batching seed of ``epoch`` in a run of ``seed``."""
    return seed * 100_003 + epoch


class EpochPlanner:
    """Hands out one rank's updates epoch by epoch, the next epoch's plan built ahead in a
    background thread (about 0.3 s at 10M pairs on one core, during the previous epoch).

    The layout (one sort and one pass over the batches) is built when the planner is made;
    :attr:`steps_per_epoch` is known from it without planning any epoch.

    Args:
        src_lens / tgt_lens: ``(n,)`` example lengths (tokens, no BOS/EOS).
        batch_tokens: padded tokens per batch; seed: the run's seed.
        rank / world_size / accum: this process's place among the ranks, batches per update.
    """

    def __init__(
        self,
        src_lens: Sequence[int] | np.ndarray,
        tgt_lens: Sequence[int] | np.ndarray,
        batch_tokens: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum: int = 1,
    ):
        self.layout = BatchLayout(src_lens, tgt_lens, batch_tokens)
        self.seed, self.rank, self.world_size, self.accum = seed, rank, world_size, accum
        self.steps_per_epoch = usable_steps(len(self.layout), world_size, accum)
        self._ahead: tuple[int, Future[BatchPlan]] | None = None
        self._lock = threading.Lock()

    def plan(self, epoch: int) -> BatchPlan:
        """Epoch ``epoch``'s plan, built now (the same on every rank)."""
        return self.layout.plan(epoch_seed(self.seed, epoch))

    def steps(self, epoch: int) -> RankSteps:
        """This rank's updates of ``epoch`` (taken from the background thread when it built
        them ahead). Building ``epoch + 1`` starts when the first update is asked for: by
        then the caller has let go of the previous epoch, so at most two plans are alive.

        Raises:
            Whatever building the plan raised (in the background thread too).
        """
        with self._lock:
            ahead, self._ahead = self._ahead, None
        plan = ahead[1].result() if ahead and ahead[0] == epoch else self.plan(epoch)
        start_next = lambda: self._build_in_background(epoch + 1)  # noqa: E731
        return plan.share(self.rank, self.world_size, self.accum, start_next)

    def _build_in_background(self, epoch: int) -> None:
        future: Future[BatchPlan] = Future()

        def build() -> None:
            try:
                future.set_result(self.plan(epoch))
            except BaseException as exc:  # handed to the caller of steps()
                future.set_exception(exc)

        with self._lock:
            self._ahead = (epoch, future)
        threading.Thread(target=build, name=f"plan-epoch-{epoch}", daemon=True).start()


def make_batches(
    src_lens: Sequence[int] | np.ndarray,
    tgt_lens: Sequence[int] | np.ndarray,
    batch_tokens: int,
    seed: int,
) -> BatchPlan:
    """All batches of one epoch (one rank), deterministic for ``seed``: examples sorted by
    (target, source) length with ties shuffled, cut so that ``count * max(src_len + 1,
    tgt_len + 1)`` stays within ``batch_tokens``, in shuffled batch order.

    Returns:
        A :class:`BatchPlan`: ``len()`` batches, each a ``(count,)`` index array.
    """
    return BatchLayout(src_lens, tgt_lens, batch_tokens).plan(seed)
