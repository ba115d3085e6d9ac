"""Dynamic batching (nmt.serve.batcher): who waits, who shares a batch, and what ends a wait."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from nmt.serve.batcher import Batcher, BatcherClosedError, QueueFullError

# Far longer than any test: a job that waited for companions would wait this long, so only
# not waiting lets a test finish, and no assertion bounds how fast a loaded machine must be.
HOUR_MS = 3_600_000
RESULT_S = 60  # how long a test waits for a result that should come at once


class Recorder:
    """A ``run`` that records each batch's key and payloads and returns payloads doubled.

    It blocks while ``gate`` is clear, and counts the batches that have entered it, so that
    a test waits for the dispatcher (:meth:`wait_entered`) instead of sleeping.
    """

    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[Any]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = 0
        self.cond = threading.Condition()

    def __call__(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        with self.cond:
            self.entered += 1
            self.cond.notify_all()
        assert self.gate.wait(RESULT_S), "the test never opened the gate"
        self.batches.append((key, list(payloads)))
        if "boom" in payloads:
            raise RuntimeError("boom")
        return [p * 2 for p in payloads]

    def wait_entered(self, n: int) -> None:
        """Wait until ``n`` batches have entered ``run`` (running, or held at the gate)."""
        with self.cond:
            assert self.cond.wait_for(lambda: self.entered >= n, RESULT_S), self.entered


def make(max_wait_ms: float, batch_tokens: int = 100, workers: int = 1) -> tuple[Batcher, Recorder]:
    run = Recorder()
    return Batcher(run, ThreadPoolExecutor(workers), workers, batch_tokens, max_wait_ms), run


def wait_idle(batcher: Batcher) -> None:
    """Wait until no batch runs (the batcher notifies its condition when one finishes)."""
    with batcher.cond:
        assert batcher.cond.wait_for(lambda: batcher.running == 0, RESULT_S)


def test_a_lone_job_does_not_wait() -> None:
    batcher, run = make(max_wait_ms=HOUR_MS)
    assert batcher.submit("k", 3, 1).result(RESULT_S) == 6  # not an hour
    batcher.close()


def test_jobs_queued_together_share_a_batch_by_key_in_order() -> None:
    batcher, run = make(max_wait_ms=300)
    run.gate.clear()  # hold the first batch so that the others queue up behind it
    first = batcher.submit("a", 0, 1)
    run.wait_entered(1)
    futures = [batcher.submit(k, i, 1) for i, k in enumerate("abab", start=1)]
    run.gate.set()
    assert first.result(RESULT_S) == 0 and [f.result(RESULT_S) for f in futures] == [2, 4, 6, 8]
    assert run.batches == [("a", [0]), ("a", [1, 3]), ("b", [2, 4])]
    batcher.close()


def test_a_full_batch_goes_before_the_wait_is_over() -> None:
    batcher, run = make(max_wait_ms=HOUR_MS, batch_tokens=10)
    run.gate.clear()
    batcher.submit("a", 0, 1)
    run.wait_entered(1)
    futures = [batcher.submit("a", i, 5) for i in range(4)]  # 20 tokens: two full batches
    run.gate.set()
    assert [f.result(RESULT_S) for f in futures] == [0, 2, 4, 6]  # not an hour
    assert [p for _, p in run.batches[1:]] == [[0, 1], [2, 3]]
    batcher.close()


def test_a_cancelled_job_is_dropped_and_drain_ends_the_wait() -> None:
    batcher, run = make(max_wait_ms=HOUR_MS)
    run.gate.clear()
    first = batcher.submit("a", 0, 1)
    run.wait_entered(1)
    cancelled = batcher.submit("a", 1, 1)
    kept = [batcher.submit("a", i, 1) for i in (2, 3)]
    assert cancelled.cancel()
    run.gate.set()
    assert first.result(RESULT_S) == 0
    wait_idle(batcher)
    assert batcher.stats()["queued"] == 2  # not alone: held for companions (an hour)
    assert run.entered == 1
    batcher.drain()
    assert [f.result(RESULT_S) for f in kept] == [4, 6]
    assert run.batches[-1] == ("a", [2, 3])
    with pytest.raises(BatcherClosedError):
        batcher.submit("a", 3, 1)
    batcher.close()


def test_an_error_fails_its_batch_only() -> None:
    batcher, _ = make(max_wait_ms=0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit("a", "boom", 1).result(RESULT_S)
    assert batcher.submit("a", 5, 1).result(RESULT_S) == 10
    batcher.close()


def test_a_bad_job_fails_alone_not_the_jobs_that_shared_its_batch() -> None:
    batcher, run = make(max_wait_ms=300)
    run.gate.clear()  # hold the first batch so that the next three queue up together
    first = batcher.submit("a", 0, 1)
    run.wait_entered(1)
    futures = [batcher.submit("a", p, 1) for p in (1, "boom", 3)]
    run.gate.set()
    assert first.result(RESULT_S) == 0
    assert futures[0].result(RESULT_S) == 2 and futures[2].result(RESULT_S) == 6
    with pytest.raises(RuntimeError, match="boom"):
        futures[1].result(RESULT_S)
    assert run.batches[1] == ("a", [1, "boom", 3])  # they did share a batch, which failed
    assert run.batches[2:] == [("a", [1]), ("a", ["boom"]), ("a", [3])]
    batcher.close()


def test_free_workers_split_the_queue_instead_of_one_taking_it_all() -> None:
    """8 jobs queued while both workers are free: two batches of 4 run at once (one batch of
    8 left a worker idle)."""
    batcher, run = make(max_wait_ms=50, batch_tokens=100, workers=2)
    run.gate.clear()  # batches wait in run() until the gate opens, so both are seen running
    with batcher.cond:  # the dispatcher cannot take anything before all 8 are queued
        futures = [batcher.submit("k", i, 1) for i in range(8)]
    run.wait_entered(2)
    assert batcher.stats() == {
        "queued": 0, "queued_lines": 0, "running": 2, "batches": 2, "alive": 1, "draining": 0
    }  # fmt: skip
    run.gate.set()
    assert [f.result(RESULT_S) for f in futures] == [2 * i for i in range(8)]
    assert sorted(len(p) for _, p in run.batches) == [4, 4]
    batcher.close()


def test_a_batch_takes_its_share_of_the_running_work_too() -> None:
    """With one worker busy on 2 tokens and 6 one-token jobs queued, the free worker takes
    ceil((6 + 2) / 2) = 4 of them, not all 6, and the other 2 wait for the busy worker: the
    two workers' batches even out (closed-loop clients otherwise split into one large group
    and one small one that stay apart, the small one searched inefficiently). No wait for
    companions (max_wait_ms 0): the 2 left stay queued only for want of a worker."""
    batcher, run = make(max_wait_ms=0, batch_tokens=100, workers=2)
    run.gate.clear()
    busy = batcher.submit("k", 100, 2)  # alone: runs at once on one worker and blocks it
    run.wait_entered(1)
    with batcher.cond:
        rest = [batcher.submit("k", i, 1) for i in range(6)]
    run.wait_entered(2)
    stats = batcher.stats()
    assert (stats["queued"], stats["running"], stats["batches"]) == (2, 2, 2)
    run.gate.set()
    assert busy.result(RESULT_S) == 200
    assert [f.result(RESULT_S) for f in rest] == [2 * i for i in range(6)]
    later = [p for _, p in run.batches if 100 not in p]  # recorded in any order
    assert [0, 1, 2, 3] in later
    assert sorted(x for p in later if p != [0, 1, 2, 3] for x in p) == [4, 5]
    batcher.close()


def test_the_queue_holds_at_most_max_queue_lines_and_running_ones_do_not_count() -> None:
    """A job that would pass ``max_queue`` waiting lines is refused, whole (a request's
    parts all or none); running lines leave room; a cancelled job's lines are freed."""
    run = Recorder()
    batcher = Batcher(run, ThreadPoolExecutor(1), 1, 100, 60_000, max_queue=5)
    run.gate.clear()
    busy = batcher.submit("a", 0, 1, lines=5)  # alone: runs at once, not queued
    run.wait_entered(1)
    waiting = batcher.submit("a", 1, 1, lines=3)
    with pytest.raises(QueueFullError, match="3 lines are waiting; the queue holds 5"):
        batcher.submit_many("a", [(2, 1, 1), (3, 1, 2)])
    assert batcher.stats()["queued_lines"] == 3  # nothing of the refused parts was queued
    kept = batcher.submit_many("a", [(4, 1, 1), (5, 1, 1)])
    with pytest.raises(QueueFullError):
        batcher.submit("a", 6, 1, lines=1)
    assert waiting.cancel()
    assert batcher.submit("a", 7, 1, lines=3) is not None
    run.gate.set()
    batcher.drain()
    assert busy.result(RESULT_S) == 0 and [f.result(RESULT_S) for f in kept] == [8, 10]
    batcher.close()


def test_an_exception_returned_for_one_job_fails_that_job_alone() -> None:
    def run(key: Hashable, payloads: list[Any]) -> list[Any]:
        return [ValueError(p) if p < 0 else p for p in payloads]

    batcher = Batcher(run, ThreadPoolExecutor(1), 1, 100, 200)
    with batcher.cond:
        futures = [batcher.submit("a", p, 1) for p in (1, -2, 3)]
    assert futures[0].result(5) == 1 and futures[2].result(5) == 3
    with pytest.raises(ValueError, match="-2"):
        futures[1].result(5)
    batcher.close()


def test_observe_sees_each_batch_size_as_it_is_dispatched() -> None:
    run = Recorder()
    seen: list[tuple[int, int]] = []
    batcher = Batcher(run, ThreadPoolExecutor(1), 1, 100, 200, observe=lambda *s: seen.append(s))
    with batcher.cond:
        futures = [batcher.submit("a", i, 4, lines=2) for i in range(3)]
    [f.result(5) for f in futures]
    assert seen == [(6, 12)]
    batcher.close()
