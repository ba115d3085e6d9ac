"""A request's work for the dynamic batcher: its source ids, cut into parts for several
workers, and one future for the parts' results (:meth:`nmt.serve.registry.ServedModel.submit`);
and the limit on the attention one answer may carry, checked before it is computed."""

from __future__ import annotations

import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

MAX_ATTENTION_VALUES = 2_000_000  # ~15 MB of JSON: what one answer may carry of attention


class AttentionTooLargeError(Exception):
    """The attention weights asked for would pass :data:`MAX_ATTENTION_VALUES` (a 413)."""


class CancelFlag:
    """Set when a request is given up (its 504). Thread-safe; a copy sent to another process
    (``benchmarks/search_process_server.py`` pickles works) is a fresh, unset flag, since
    that process cannot see it set."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __reduce__(self) -> tuple[type[CancelFlag], tuple[()]]:
        return CancelFlag, ()


@dataclass(frozen=True)
class Work:
    """One request's payload for the batcher: source ids (cut to the model's limit) per line,
    which lines were cut, and whether to compute attention.

    ``cancelled`` is set when the request is given up (504): a batch that has not reached
    this work's lines yet leaves them out, and its result is discarded. The parts of one
    request (:func:`split_work`) share it. ``max_attention``: the most attention weights the
    answer may carry (``None``: none are returned, e.g. alignment only).
    """

    ids: list[list[int]]
    truncated: list[bool]
    attention: bool
    prefixes: list[list[int]] | None = None  # target-prefix ids per line ([] = none)
    seeds: list[int] | None = None  # per-line sampling seeds (nmt.decode.sampling.sentence_seed)
    max_attention: int | None = None
    cancelled: CancelFlag = field(default_factory=CancelFlag, compare=False)


# Lines per worker from which a request is split over the workers (ServedModel.submit).
SPLIT_LINES = 8


def work_tokens(work: Work) -> int:
    """Source tokens of ``work`` as the batcher counts them (EOS counted, as in a batch)."""
    return sum(len(x) + 1 for x in work.ids)


def check_attention_size(values: int, limit: int) -> None:
    """Refuse an answer whose attention matrices would hold more than ``limit`` numbers
    (:data:`MAX_ATTENTION_VALUES`): a 1.5 KB request (a long line, 16-best) once answered
    196 MB of JSON. ``values`` is counted from the hypotheses' lengths, before any
    attention is computed.

    Raises:
        AttentionTooLargeError: with the size and what to change.
    """
    if values > limit:
        raise AttentionTooLargeError(
            f"return_attention: {values:,} weights (layers × heads × target × source pieces, "
            f"over every line and n-best hypothesis); at most {limit:,} in one "
            "answer: send fewer or shorter lines, a lower nbest, or return_piece_alignment alone"
        )


def split_work(work: Work, n: int) -> list[Work]:
    """``work`` cut into ``n`` parts of consecutive lines (sizes differ by one at most); the
    parts share ``work.cancelled``."""
    bounds = [len(work.ids) * i // n for i in range(n + 1)]

    def part(a: int, b: int) -> Work:
        return Work(
            work.ids[a:b],
            work.truncated[a:b],
            work.attention,
            None if work.prefixes is None else work.prefixes[a:b],
            None if work.seeds is None else work.seeds[a:b],
            work.max_attention,
            work.cancelled,
        )

    return [part(a, b) for a, b in zip(bounds, bounds[1:])]


def joined(parts: list[Future[list[Any]]]) -> Future[list[Any]]:
    """One future for the results of ``parts``, concatenated in order; the first part's
    exception fails it, and cancelling it (a request that timed out) cancels the parts
    still queued."""
    out: Future[list[Any]] = Future()
    lock = threading.Lock()
    left = [len(parts)]

    def part_done(_: Future[list[Any]]) -> None:
        with lock:
            left[0] -= 1
            if left[0] or out.done():
                return
        if any(p.cancelled() for p in parts):
            out.cancel()
            return
        errors = [e for e in (p.exception() for p in parts) if e is not None]
        try:
            if errors:
                out.set_exception(errors[0])
            else:
                out.set_result([r for p in parts for r in p.result()])
        except InvalidStateError:  # cancelled meanwhile (the request timed out)
            pass

    def cancel_parts(f: Future[list[Any]]) -> None:
        if f.cancelled():
            for p in parts:
                p.cancel()

    out.add_done_callback(cancel_parts)
    for p in parts:
        p.add_done_callback(part_done)
    return out
