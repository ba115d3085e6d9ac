"""Reading parallel text, length filtering, padding and collating batches.

Corpus files are ``PREFIX.LANG`` or ``PREFIX.LANG.gz``, one sentence per line, UTF-8.
Which examples form a batch is decided in :mod:`nmt.data.batching`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch

from nmt.data.encoding import keep_reason
from nmt.data.textio import (  # noqa: F401 - corpus_path, count_lines, iter_lines re-exported
    check_line_counts,
    corpus_path,
    count_lines,
    iter_lines,
    read_lines,
)
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from nmt.errors import InputError


def read_parallel(prefix: str | Path, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    """Source and target lines of a parallel corpus.

    Raises:
        InputError: a file is missing or not UTF-8, the two files differ in line count (both
            files and counts named), or the corpus is empty.
    """
    src_path, tgt_path = corpus_path(prefix, src_lang), corpus_path(prefix, tgt_lang)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    check_line_counts(src_path, len(src), tgt_path, len(tgt))
    if not any(s.strip() for s in src):
        raise InputError("corpus is empty (no non-blank line)", src_path)
    return src, tgt


class Corpus(Protocol):
    """What batching and :func:`collate` need of a corpus: in memory (:class:`ParallelData`)
    or memory-mapped (:class:`nmt.data.store.ParallelStore`)."""

    @property
    def src_lens(self) -> Sequence[int] | np.ndarray:
        """``(n,)`` source lengths, tokens without EOS."""

    @property
    def tgt_lens(self) -> Sequence[int] | np.ndarray:
        """``(n,)`` target lengths, tokens without BOS/EOS."""

    def __len__(self) -> int: ...

    def pair(self, i: int) -> tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray]:
        """Source and target ids of example ``i``."""


@dataclass
class ParallelData:
    """Token ids of sentence pairs kept after filtering (no BOS/EOS added yet), in memory."""

    src: list[list[int]]
    tgt: list[list[int]]
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.src)

    @property
    def src_lens(self) -> list[int]:
        return [len(s) for s in self.src]

    @property
    def tgt_lens(self) -> list[int]:
        return [len(t) for t in self.tgt]

    def pair(self, i: int) -> tuple[list[int], list[int]]:
        return self.src[i], self.tgt[i]


def encode_parallel(
    tokenizer: Tokenizer, src: Sequence[str], tgt: Sequence[str], max_len: int
) -> ParallelData:
    """Encode pairs in memory and drop those with an empty side or more than ``max_len``
    tokens (the filter of :func:`nmt.data.encoding.keep_reason`; large corpora go through
    :func:`nmt.data.store.prepare` instead)."""
    src_ids, tgt_ids = tokenizer.encode(src), tokenizer.encode_target(tgt)
    kept = ParallelData([], [])
    for s, t in zip(src_ids, tgt_ids):
        if keep_reason(len(s), len(t), max_len) is None:
            kept.src.append(s)
            kept.tgt.append(t)
        else:
            kept.dropped += 1
    return kept


@dataclass
class Batch:
    """Padded tensors of one batch.

    Attributes:
        src: ``(batch, src_len)`` int64, source ids + EOS, right-padded with PAD.
        tgt_in: ``(batch, tgt_len)`` int64, BOS + target ids (decoder input).
        tgt_out: ``(batch, tgt_len)`` int64, target ids + EOS (labels), PAD where padded.
        n_tgt_tokens: non-pad target tokens (the count the loss is averaged over).
    """

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    n_tgt_tokens: int

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.src.to(device, non_blocking=True),
            self.tgt_in.to(device, non_blocking=True),
            self.tgt_out.to(device, non_blocking=True),
            self.n_tgt_tokens,
        )


# One side of a batch: (total,) ids of its sentences one after another, (count,) lengths.
Ragged = tuple[np.ndarray, np.ndarray]


def pad(
    seqs: Sequence[Sequence[int] | np.ndarray],
    prefix: int | None = None,
    suffix: int | None = None,
    pad_id: int = PAD_ID,
) -> torch.Tensor:
    """Right-pad id sequences with ``pad_id`` into a ``(batch, max_len)`` int64 tensor, adding
    BOS/EOS if given.

    ``seqs`` may hold lists or numpy arrays (rows of a memory-mapped store).
    """
    return pad_ragged(*ragged(seqs), prefix, suffix, pad_id)


def ragged(seqs: Sequence[Sequence[int] | np.ndarray]) -> Ragged:
    """Id sequences as one flat ``(total,)`` int64 array and their ``(count,)`` lengths."""
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = [np.asarray(s, dtype=np.int64) for s in seqs if len(s)]
    return (np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)), lens


def gather_pairs(data: Corpus, indices: Sequence[int] | np.ndarray) -> tuple[Ragged, Ragged]:
    """The source and target ids of the examples at ``indices``, each side as one flat
    array and the sentences' lengths: a corpus with a vectorised ``gather`` (the prepared
    store, :meth:`nmt.data.prepared.ParallelStore.gather`) answers in a few numpy calls;
    others are asked pair by pair."""
    gather = getattr(data, "gather", None)
    if gather is not None:
        return gather(np.asarray(indices, dtype=np.int64))  # type: ignore[no-any-return]
    pairs = [data.pair(int(i)) for i in indices]
    return ragged([s for s, _ in pairs]), ragged([t for _, t in pairs])


def pad_ragged(
    ids: np.ndarray,
    lens: np.ndarray,
    prefix: int | None = None,
    suffix: int | None = None,
    pad_id: int = PAD_ID,
) -> torch.Tensor:
    """:func:`pad` of sentences given as one flat array, without a loop over them.

    Args:
        ids: ``(total,)`` ids of the sentences one after another; lens: ``(count,)`` their
            lengths (``total = lens.sum()``).
        prefix / suffix: an id put before / after every sentence (BOS, EOS), if given.

    Returns:
        ``(count, max(lens) + [prefix] + [suffix])`` int64, right-padded with ``pad_id``.
    """
    lens = np.asarray(lens, dtype=np.int64)
    start = int(prefix is not None)
    width = int(lens.max(initial=0)) + start + int(suffix is not None)
    out = np.full((len(lens), width), pad_id, dtype=np.int64)
    rows = np.repeat(np.arange(len(lens)), lens)  # (total,) the sentence of each id
    firsts = np.cumsum(lens) - lens  # (count,) where each sentence starts in ids
    cols = np.arange(len(rows)) - np.repeat(firsts, lens) + start  # (total,) its column
    out[rows, cols] = ids
    if prefix is not None:
        out[:, 0] = prefix
    if suffix is not None:
        out[np.arange(len(lens)), lens + start] = suffix
    return torch.from_numpy(out)


def collate(data: Corpus, indices: Sequence[int] | np.ndarray) -> Batch:
    """The padded :class:`Batch` of the examples at ``indices`` (ints or a ``(count,)``
    integer array), built with array operations over the whole batch (:func:`gather_pairs`,
    :func:`pad_ragged`), not sentence by sentence."""
    (src_ids, src_lens), (tgt_ids, tgt_lens) = gather_pairs(data, indices)
    src = pad_ragged(src_ids, src_lens, suffix=EOS_ID)
    tgt_in = pad_ragged(tgt_ids, tgt_lens, prefix=BOS_ID)
    tgt_out = pad_ragged(tgt_ids, tgt_lens, suffix=EOS_ID)
    return Batch(src, tgt_in, tgt_out, int(tgt_lens.sum()) + len(tgt_lens))


T = TypeVar("T")
_DONE = object()


class Prefetcher(Generic[T]):
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead.

    Building the next batches (reading the memory-mapped store, padding) then overlaps the
    model's step; torch releases the GIL in its kernels. An error in the thread is raised
    in the consumer. :attr:`wait_s` counts the seconds the consumer spent blocked waiting
    for an item (the data pipeline's share of the step time). Use it as a context manager
    so the thread stops when the consumer stops early.
    """

    def __init__(self, items: Iterable[T], depth: int = 4):
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.wait_s = 0.0
        self.thread = threading.Thread(target=self._fill, args=(iter(items),), daemon=True)
        self.thread.start()

    def _fill(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put(exc)
            return
        self._put(_DONE)

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            tick = time.perf_counter()
            item = self.queue.get()
            self.wait_s += time.perf_counter() - tick
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the thread (it exits at its next item) and wait for it."""
        self.stop.set()
        self.thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
