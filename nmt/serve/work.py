"""A request's work for the dynamic batcher: its source ids, cut into parts for several
workers, and one future for the parts' results (:meth:`nmt.serve.registry.ServedModel.submit`)."""

from __future__ import annotations

import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Work:
    """One request's payload for the batcher: source ids (cut to the model's limit) per line,
    which lines were cut, and whether to compute attention."""

    ids: list[list[int]]
    truncated: list[bool]
    attention: bool
    prefixes: list[list[int]] | None = None  # target-prefix ids per line ([] = none)
    seeds: list[int] | None = None  # per-line sampling seeds (nmt.decode.sampling.sentence_seed)


# Lines per worker from which a request is split over the workers (ServedModel.submit).
SPLIT_LINES = 8


def work_tokens(work: Work) -> int:
    """Source tokens of ``work`` as the batcher counts them (EOS counted, as in a batch)."""
    return sum(len(x) + 1 for x in work.ids)


def split_work(work: Work, n: int) -> list[Work]:
    """``work`` cut into ``n`` parts of consecutive lines (sizes differ by one at most)."""
    bounds = [len(work.ids) * i // n for i in range(n + 1)]

    def part(a: int, b: int) -> Work:
        return Work(
            work.ids[a:b],
            work.truncated[a:b],
            work.attention,
            None if work.prefixes is None else work.prefixes[a:b],
            None if work.seeds is None else work.seeds[a:b],
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
