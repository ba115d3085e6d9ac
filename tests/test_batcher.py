"""Dynamic batching (nmt.batcher): who waits, who shares a batch, and what ends a wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from nmt.batcher import Batcher, BatcherClosedError


class Recorder:
    """A ``run`` that records each batch's key and payloads and returns payloads doubled;
    it blocks while ``gate`` is clear."""

    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[Any]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        self.gate.wait(10)
        self.batches.append((key, list(payloads)))
        if "boom" in payloads:
            raise RuntimeError("boom")
        return [p * 2 for p in payloads]


def make(max_wait_ms: float, batch_tokens: int = 100, workers: int = 1) -> tuple[Batcher, Recorder]:
    run = Recorder()
    return Batcher(run, ThreadPoolExecutor(workers), workers, batch_tokens, max_wait_ms), run


def test_a_lone_job_does_not_wait() -> None:
    batcher, run = make(max_wait_ms=5000)
    start = time.monotonic()
    assert batcher.submit("k", 3, 1).result(5) == 6
    assert time.monotonic() - start < 2.0  # far below the 5 s it would wait for companions
    batcher.close()


def test_jobs_queued_together_share_a_batch_by_key_in_order() -> None:
    batcher, run = make(max_wait_ms=300)
    run.gate.clear()  # hold the first batch so that the others queue up behind it
    first = batcher.submit("a", 0, 1)
    time.sleep(0.1)
    futures = [batcher.submit(k, i, 1) for i, k in enumerate("abab", start=1)]
    run.gate.set()
    assert first.result(5) == 0 and [f.result(5) for f in futures] == [2, 4, 6, 8]
    assert run.batches == [("a", [0]), ("a", [1, 3]), ("b", [2, 4])]
    batcher.close()


def test_a_full_batch_goes_before_the_wait_is_over() -> None:
    batcher, run = make(max_wait_ms=5000, batch_tokens=10)
    run.gate.clear()
    batcher.submit("a", 0, 1)
    time.sleep(0.1)
    start = time.monotonic()
    futures = [batcher.submit("a", i, 5) for i in range(4)]  # 20 tokens: two full batches
    run.gate.set()
    assert [f.result(5) for f in futures] == [0, 2, 4, 6]
    assert time.monotonic() - start < 2.0
    assert [p for _, p in run.batches[1:]] == [[0, 1], [2, 3]]
    batcher.close()


def test_a_cancelled_job_is_dropped_and_drain_ends_the_wait() -> None:
    batcher, run = make(max_wait_ms=60_000)
    run.gate.clear()
    batcher.submit("a", 0, 1)
    time.sleep(0.1)
    cancelled = batcher.submit("a", 1, 1)
    kept = [batcher.submit("a", i, 1) for i in (2, 3)]
    assert cancelled.cancel()
    run.gate.set()
    time.sleep(0.2)
    assert batcher.stats()["queued"] == 2  # not alone: held for companions (a minute)
    batcher.drain()
    assert [f.result(5) for f in kept] == [4, 6]
    assert run.batches[-1] == ("a", [2, 3])
    with pytest.raises(BatcherClosedError):
        batcher.submit("a", 3, 1)
    batcher.close()


def test_an_error_fails_its_batch_only() -> None:
    batcher, _ = make(max_wait_ms=0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit("a", "boom", 1).result(5)
    assert batcher.submit("a", 5, 1).result(5) == 10
    batcher.close()


def test_free_workers_split_the_queue_instead_of_one_taking_it_all() -> None:
    """8 jobs queued while both workers are free: two batches of 4 run at once (one batch of
    8 left a worker idle), and once one worker is busy the other takes all that is left."""
    batcher, run = make(max_wait_ms=50, batch_tokens=100, workers=2)
    run.gate.clear()  # batches wait in run() until the gate opens, so both are seen running
    with batcher.cond:  # the dispatcher cannot take anything before all 8 are queued
        futures = [batcher.submit("k", i, 1) for i in range(8)]
    deadline = time.monotonic() + 5
    while batcher.stats()["running"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.stats() == {"queued": 0, "running": 2, "batches": 2}
    run.gate.set()
    assert [f.result(5) for f in futures] == [2 * i for i in range(8)]
    assert sorted(len(p) for _, p in run.batches) == [4, 4]
    run.gate.clear()
    busy = batcher.submit("k", 100, 1)  # alone: runs at once on one worker and blocks it
    while batcher.stats()["running"] < 1:
        time.sleep(0.01)
    with batcher.cond:
        rest = [batcher.submit("k", i, 1) for i in range(6)]
    while batcher.stats()["running"] < 2:
        time.sleep(0.01)
    run.gate.set()
    assert busy.result(5) == 200 and [f.result(5) for f in rest] == [2 * i for i in range(6)]
    assert len(run.batches[-1][1]) == 6 or len(run.batches[-2][1]) == 6
    batcher.close()


class Joining:
    """A ``run_joining`` that holds each batch open, calling ``join`` every 5 ms with the
    batch's live tokens (its jobs' payloads, summed), until ``release`` is set; then it
    answers every job with its payload doubled. ``fail`` makes it raise instead, after
    answering the batch's first job. Records which batch (by its first payload) took each
    payload."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.took: dict[Any, Any] = {}
        self.fail = False

    def __call__(self, key: Hashable, batch: Any) -> None:
        held = list(batch.payloads)
        first = held[0][1]
        for _, p in held:
            self.took[p] = first
        while not self.release.wait(0.005):
            for number, p in batch.join(sum(q for _, q in held)):
                held.append((number, p))
                self.took[p] = first
        if self.fail:
            number, p = held[0]
            batch.finish(number, p * 2)
            raise RuntimeError("search failed")
        for number, p in held:
            batch.finish(number, p * 2)


def joining(workers: int, max_wait_ms: float) -> tuple[Batcher, Joining]:
    run = Joining()
    batcher = Batcher(
        Recorder(), ThreadPoolExecutor(workers), workers, 100, max_wait_ms, run, lambda k: k == "j"
    )
    return batcher, run


def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_queued_jobs_join_a_running_batch_once_due_and_in_order() -> None:
    """One worker, busy: jobs of its key join its batch after waiting ``max_wait_ms`` (not
    before), in one batch in all; a job of another key at the head of the queue stops
    joining until it has run."""
    batcher, run = joining(workers=1, max_wait_ms=200)
    first = batcher.submit("j", 1, 1)  # alone: runs at once
    wait_for(lambda: batcher.stats()["running"] == 1)
    submitted = time.monotonic()
    later = [batcher.submit("j", p, 1) for p in (2, 3)]
    time.sleep(0.1)
    assert batcher.stats()["queued"] == 2  # not due yet
    wait_for(lambda: batcher.stats()["queued"] == 0)
    assert time.monotonic() - submitted >= 0.2
    assert run.took == {1: 1, 2: 1, 3: 1} and batcher.stats()["batches"] == 1
    other = batcher.submit("k", 4, 1)  # another key (run by `run`, not joining)
    blocked = batcher.submit("j", 5, 1)
    time.sleep(0.4)
    assert batcher.stats()["queued"] == 2 and 5 not in run.took  # behind the "k" job
    run.release.set()
    assert [f.result(5) for f in (first, *later, other, blocked)] == [2, 4, 6, 8, 10]
    assert run.took[5] == 5  # a batch of its own, after the "k" batch
    batcher.close()


def test_the_least_loaded_running_batch_takes_the_queue() -> None:
    batcher, run = joining(workers=2, max_wait_ms=0)
    heavy = batcher.submit("j", 50, 50)
    wait_for(lambda: batcher.stats()["running"] == 1)
    light = batcher.submit("j", 1, 1)  # a free worker: dispatched, not joined
    wait_for(lambda: batcher.stats()["running"] == 2)
    assert run.took == {50: 50, 1: 1}
    joiners = [batcher.submit("j", p, 1) for p in (2, 3, 4)]
    wait_for(lambda: batcher.stats()["queued"] == 0)
    assert [run.took[p] for p in (2, 3, 4)] == [1, 1, 1]  # the light batch, never the heavy
    run.release.set()
    assert [f.result(5) for f in (heavy, light, *joiners)] == [100, 2, 4, 6, 8]
    assert batcher.stats()["batches"] == 2
    batcher.close()


def test_a_failing_joining_batch_fails_only_its_unanswered_jobs() -> None:
    batcher, run = joining(workers=1, max_wait_ms=0)
    run.fail = True
    first = batcher.submit("j", 1, 1)
    wait_for(lambda: batcher.stats()["running"] == 1)
    joined = batcher.submit("j", 2, 1)
    wait_for(lambda: batcher.stats()["queued"] == 0)
    run.release.set()
    assert first.result(5) == 2  # answered before the failure
    with pytest.raises(RuntimeError, match="search failed"):
        joined.result(5)
    run.fail = False
    assert batcher.submit("j", 3, 1).result(5) == 6  # the worker is free again
    batcher.close()
