"""Dynamic batching: requests that arrive close together are searched as one batch.

A server answering one request at a time searches batches of one or two sentences, and its
throughput under load stays far below that of translating a file. :class:`Batcher` gathers
the jobs of concurrent requests that share a key (the decoding options) into one batch of at
most ``batch_tokens`` source tokens, as Triton's dynamic batcher and CTranslate2's
``max_batch_size``/``batch_type`` do:

- a job that finds nothing else in the batcher (no other job queued, no batch running) is
  dispatched at once, so a lone request is answered at single-request latency;
- otherwise the oldest job waits for companions until its batch holds ``batch_tokens`` tokens
  or it has waited ``max_wait_ms`` milliseconds, and a batch is dispatched only when a
  worker is free (meanwhile the queue grows, which is what makes batches under load);
- a batch takes at most its share of what is queued, ``queued tokens / free workers``, so
  that free workers split the queue instead of one taking it all while the others idle
  (with closed-loop clients, 64 single-line requests, under 4,096 tokens, otherwise went to
  one single-threaded worker at a time, and the next ones only came back once it was done);
- and at most its share of all the work, ``(queued + running tokens) / workers``: what it
  leaves waits for the next worker to free up, so that the workers' batches even out
  (closed-loop clients otherwise settle into one large batch on one worker and small,
  inefficient ones on the other, the same clients each time; docs/benchmarks.md);
- a job cancelled while still queued (its request timed out) is dropped;
- the queue holds at most ``max_queue`` lines (jobs waiting, not running): a job that would
  pass it is refused with :class:`QueueFullError` (the server answers 503 and Retry-After),
  so that what waits, and how long it waits, stays bounded under overload;
- a batch that raises runs again one job at a time, so that only the jobs that fail alone
  get the error (one request's bad input does not fail the requests that shared its batch);
  ``run`` may also return an exception in place of one job's result: that job alone fails;
- :meth:`Batcher.drain` stops all waiting (shutdown: queued jobs are dispatched at once, and
  no job is accepted any more); :meth:`Batcher.close` also ends the dispatcher thread.

The batcher knows nothing of translation (torch-free): ``run(key, payloads)`` is called on a
worker thread and returns one result per payload; ``observe(lines, tokens)``, when given, is
called with each batch's size as it is dispatched (the server's metrics).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]
Observe = Callable[[int, int], None]


class BatcherClosedError(RuntimeError):
    """A job was submitted after :meth:`Batcher.drain` or :meth:`Batcher.close`."""


class QueueFullError(RuntimeError):
    """A job would pass the queue's limit of lines (:attr:`Batcher.max_queue`)."""


@dataclass
class Job:
    """One request's work: ``payload`` (opaque to the batcher) of ``tokens`` source tokens
    in ``lines`` lines."""

    key: Hashable
    payload: Any
    tokens: int
    lines: int = 1
    future: Future[Any] = field(default_factory=Future)
    arrival: float = field(default_factory=time.monotonic)  # seconds, time.monotonic()


class Batcher:
    """Gathers jobs with equal keys into batches and runs them on ``executor``.

    Args:
        run: ``run(key, payloads)`` → one result per payload, in order; called on a worker
            thread; an exception fails every job of the batch.
        executor: where batches run (e.g. :func:`nmt.decode.translate.worker_pool`).
        workers: batches run at once at most (the executor's threads).
        batch_tokens: source tokens per batch at most (a larger single job runs alone).
        max_wait_ms: how long the oldest queued job waits for companions, in milliseconds.
        max_queue: lines waiting at most (running ones not counted); ``None`` = no limit.
        observe: called as ``observe(lines, tokens)`` with each batch as it is dispatched.

    Raises:
        ValueError: ``workers``, ``batch_tokens`` or ``max_queue`` below 1, or negative
            ``max_wait_ms``.
    """

    def __init__(
        self,
        run: RunBatch,
        executor: Executor,
        workers: int,
        batch_tokens: int,
        max_wait_ms: float,
        max_queue: int | None = None,
        observe: Observe | None = None,
    ):
        if workers < 1 or batch_tokens < 1 or max_wait_ms < 0 or (max_queue or 1) < 1:
            raise ValueError(
                f"workers={workers}, batch_tokens={batch_tokens} and max_queue={max_queue} "
                f"must be at least 1, max_wait_ms={max_wait_ms} at least 0"
            )
        self.run, self.executor, self.workers = run, executor, workers
        self.batch_tokens, self.max_wait = batch_tokens, max_wait_ms / 1000.0
        self.max_queue, self.observe = max_queue, observe
        self.queue: list[Job] = []
        self.running = 0  # batches running now
        self.running_tokens = 0  # their source tokens
        self.batches = 0  # batches dispatched so far
        self.draining = self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._dispatch_loop, name="nmt-batcher", daemon=True)
        self.thread.start()

    def submit(self, key: Hashable, payload: Any, tokens: int, lines: int = 1) -> Future[Any]:
        """Queue a job of ``lines`` lines; its future gets ``run``'s result for ``payload``
        (or its exception).

        Cancel the future to drop the job while it is still queued.

        Raises:
            BatcherClosedError: the batcher is draining or closed.
            QueueFullError: the queue cannot take ``lines`` more lines (``max_queue``).
        """
        return self.submit_many(key, [(payload, tokens, lines)])[0]

    def submit_many(self, key: Hashable, jobs: Sequence[tuple[Any, int, int]]) -> list[Future[Any]]:
        """Queue several ``(payload, tokens, lines)`` jobs at once (the parts of one
        request), all or none, so that the batcher sees them together and free workers take
        a part each.

        Raises:
            BatcherClosedError: the batcher is draining or closed.
            QueueFullError: the queue cannot take their lines (``max_queue``).
        """
        new = [Job(key, payload, tokens, lines) for payload, tokens, lines in jobs]
        with self.cond:
            if self.draining:
                raise BatcherClosedError("the server is shutting down")
            if self.max_queue is not None:
                self._drop_cancelled()
                queued = sum(j.lines for j in self.queue)
                asked = sum(j.lines for j in new)
                if queued + asked > self.max_queue:
                    raise QueueFullError(
                        f"{queued} lines are waiting; the queue holds {self.max_queue} "
                        f"(--max-queue) and this request has {asked}"
                    )
            self.queue += new
            self.cond.notify_all()
        return [j.future for j in new]

    def stats(self) -> dict[str, int]:
        """``queued`` jobs and their ``queued_lines``, ``running`` batches, ``batches``
        dispatched so far, ``alive``: 1 while the dispatcher thread runs, and ``draining``: 1
        once :meth:`drain` or :meth:`close` was called."""
        with self.cond:
            waiting = [j for j in self.queue if not j.future.cancelled()]
            return {
                "queued": len(waiting),
                "queued_lines": sum(j.lines for j in waiting),
                "running": self.running,
                "batches": self.batches,
                "alive": int(self.thread.is_alive()),
                "draining": int(self.draining),
            }

    def drain(self) -> None:
        """Stop waiting for companions and accept no new job; queued jobs still run."""
        with self.cond:
            self.draining = True
            self.cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Drain, run what is queued, and end the dispatcher thread (waits ``timeout`` s)."""
        with self.cond:
            self.draining = self.closed = True
            self.cond.notify_all()
        self.thread.join(timeout)

    # The dispatcher thread -------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while True:
            with self.cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self.running += 1
                self.running_tokens += sum(j.tokens for j in batch)
                self.batches += 1
            if self.observe is not None and batch:
                self.observe(sum(j.lines for j in batch), sum(j.tokens for j in batch))
            try:
                self.executor.submit(self._run_batch, batch)
            except RuntimeError as exc:  # the executor was shut down
                self._finish(batch, exc)

    def _next_batch(self) -> list[Job] | None:
        """Wait (holding ``cond``) until a batch is due and a worker is free; ``None`` when
        closed and nothing is left."""
        while True:
            self._drop_cancelled()
            if not self.queue:
                if self.closed:
                    return None
                self.cond.wait()
                continue
            if self.running >= self.workers:
                self.cond.wait()
                continue
            first = self.queue[0]
            alone = len(self.queue) == 1 and self.running == 0
            deadline = first.arrival + self.max_wait
            now = time.monotonic()
            if alone or self.draining or now >= deadline or self._full(first.key):
                return self._take(first.key)
            self.cond.wait(deadline - now)

    def _drop_cancelled(self) -> None:
        self.queue = [j for j in self.queue if not j.future.cancelled()]

    def _full(self, key: Hashable) -> bool:
        return sum(j.tokens for j in self.queue if j.key == key) >= self.batch_tokens

    def _take(self, key: Hashable) -> list[Job]:
        """Remove the oldest jobs with ``key`` from the queue, up to ``batch_tokens`` tokens
        and this batch's share (the queued tokens with ``key`` over the free workers, and
        those plus the running batches' tokens over all workers; the first job always, even
        when larger), and mark them running."""
        free = max(1, self.workers - self.running)
        queued = sum(j.tokens for j in self.queue if j.key == key)
        share = min(-(-queued // free), -(-(queued + self.running_tokens) // self.workers))
        limit = min(self.batch_tokens, share)
        batch: list[Job] = []
        tokens = 0
        for job in self.queue:
            if job.key != key or (batch and tokens + job.tokens > limit):
                continue
            batch.append(job)
            tokens += job.tokens
        taken = {id(j) for j in batch}
        self.queue = [j for j in self.queue if id(j) not in taken]
        return [j for j in batch if j.future.set_running_or_notify_cancel()]

    def _run_batch(self, batch: list[Job]) -> None:
        try:
            results = self.run(batch[0].key, [j.payload for j in batch]) if batch else []
        except Exception as exc:
            if len(batch) == 1:
                self._finish(batch, exc)
                return
            # One job's bad input must not fail the others that shared its batch: each runs
            # again alone, and only those that fail alone get their error.
            for job in batch:
                try:
                    job.future.set_result(self.run(job.key, [job.payload])[0])
                except Exception as job_exc:
                    job.future.set_exception(job_exc)
            self._finish(batch, None)
            return
        except BaseException as exc:  # an interrupt: handed to every waiting request
            self._finish(batch, exc)
            return
        for job, result in zip(batch, results):
            if isinstance(result, BaseException):  # this job's own error (run's choice)
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        self._finish(batch, None)

    def _finish(self, batch: list[Job], exc: BaseException | None) -> None:
        if exc is not None:
            for job in batch:
                job.future.set_exception(exc)
        with self.cond:
            self.running -= 1
            self.running_tokens -= sum(j.tokens for j in batch)
            self.cond.notify_all()
