"""Encoding a parallel corpus into token ids for the prepared store (:mod:`nmt.data.store`):
chunk by chunk, in worker processes, with at most ``2 * workers`` chunks in flight, each pair
filtered by its lengths (:func:`keep_reason`).

The workers run this module's functions: keep it free of torch.
"""

from __future__ import annotations

import itertools
import multiprocessing
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmt.data.tokenizer import Tokenizer
from nmt.data.vocab import load_tokenizer

CHUNK_LINES = 20_000  # sentence pairs per worker task

DROP_REASONS = ("empty", "too_long", "ratio")


@dataclass
class EncodedChunk:
    """Token ids of the kept pairs of one chunk: flat ids and per-sentence lengths."""

    src_ids: np.ndarray
    src_lens: np.ndarray
    tgt_ids: np.ndarray
    tgt_lens: np.ndarray
    lines: int
    dropped: dict[str, int]


_worker_tokenizer: Tokenizer | None = None


def _init_worker(vocab_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(vocab_dir)


def keep_reason(src_len: int, tgt_len: int, max_len: int, max_ratio: float = 0.0) -> str | None:
    """Why a pair of ``src_len`` / ``tgt_len`` tokens is dropped, or ``None`` to keep it."""
    if src_len == 0 or tgt_len == 0:
        return "empty"
    if src_len > max_len or tgt_len > max_len:
        return "too_long"
    if max_ratio and max(src_len, tgt_len) > max_ratio * min(src_len, tgt_len):
        return "ratio"
    return None


def _encode_chunk(
    src: list[str], tgt: list[str], max_len: int, max_ratio: float, dtype: str
) -> EncodedChunk:
    """Encode one chunk of pairs with the worker's tokenizer and filter them."""
    assert _worker_tokenizer is not None, "_init_worker was not called"
    src_ids, tgt_ids = _worker_tokenizer.encode(src), _worker_tokenizer.encode_target(tgt)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    kept_src, kept_tgt = [], []
    for s, t in zip(src_ids, tgt_ids):
        reason = keep_reason(len(s), len(t), max_len, max_ratio)
        if reason is None:
            kept_src.append(s)
            kept_tgt.append(t)
        else:
            dropped[reason] += 1
    return EncodedChunk(
        np.fromiter(itertools.chain.from_iterable(kept_src), dtype=dtype),
        np.fromiter(map(len, kept_src), dtype=np.int64, count=len(kept_src)),
        np.fromiter(itertools.chain.from_iterable(kept_tgt), dtype=dtype),
        np.fromiter(map(len, kept_tgt), dtype=np.int64, count=len(kept_tgt)),
        len(src),
        dropped,
    )


def _chunks(pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[list[str], list[str]]]:
    iterator = iter(pairs)
    while chunk := list(itertools.islice(iterator, CHUNK_LINES)):
        src, tgt = zip(*chunk)
        yield list(src), list(tgt)


def _start_method() -> str:
    # fork is fast and re-imports nothing, but is unsafe once other threads run (e.g. a
    # process group's); then the workers start fresh (they import only this module's needs).
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def encode_chunks(
    pairs: Iterable[tuple[str, str]],
    vocab_dir: Path,
    settings: tuple[int, float, str],
    workers: int,
) -> Iterator[EncodedChunk]:
    """Encode ``pairs`` chunk by chunk, in order, in ``workers`` processes (1 = in this one).

    Args:
        vocab_dir: the folder holding the SentencePiece model(s) (:mod:`nmt.data.vocab`).
        settings: ``(max_len, max_ratio, id dtype name)``.
    """
    if workers <= 1:
        _init_worker(str(vocab_dir))
        for src, tgt in _chunks(pairs):
            yield _encode_chunk(src, tgt, *settings)
        return
    context = multiprocessing.get_context(_start_method())
    with context.Pool(workers, _init_worker, (str(vocab_dir),)) as pool:
        pending: deque[Any] = deque()
        for src, tgt in _chunks(pairs):
            pending.append(pool.apply_async(_encode_chunk, (src, tgt, *settings)))
            if len(pending) >= 2 * workers:  # bounded read-ahead: memory stays flat
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
