"""``nmt serve`` with its batches searched in child processes: a prototype, for
``benchmarks/serve_load.py --launcher``, of moving the search out of the event loop's process
(so that the event loop's Python no longer competes with the workers for the GIL).

    python benchmarks/search_process_server.py {spawn,fork} serve -m ID=DIR [nmt serve options]

- ``spawn``: one child process, started afresh, loads the served models a second time and
  searches each batch on its own worker threads (as many as the server's);
- ``fork``: one single-threaded child per worker, forked from the server once its models are
  loaded, sharing their memory pages.

The server's worker threads only pass ``(model id, options, works)`` to a child over a pipe
and wait for the results. Not part of nmt: there is no handling of a crashed child, forking a
process that already runs threads is unsafe in general, CTranslate2's and CUDA's threads do
not survive a fork, and ``spawn`` holds the models twice (docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import queue
import runpy
import sys
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

import nmt.serve.registry as registry


def spawned(conn: Connection, specs: list[str], workers: int) -> None:
    """The ``spawn`` child: load ``specs``, then search each request on ``workers`` threads."""
    from nmt.decode.translate import worker_pool

    models = registry.load_models(specs)
    pool = worker_pool(workers, 1)
    lock = threading.Lock()

    def work(rid: int, model_id: str, options: Any, works: Any) -> None:
        result: tuple[bool, Any]
        try:
            result = (True, models[model_id].run(options, works))
        except Exception as exc:  # returned to the server's worker thread
            result = (False, exc)
        with lock:
            conn.send((rid, result))

    while (msg := conn.recv()) is not None:
        pool.submit(work, *msg)


def forked(conn: Connection, models: dict[str, Any]) -> None:
    """A ``fork`` child: search one request at a time on one thread."""
    import torch

    torch.set_num_threads(1)
    while (msg := conn.recv()) is not None:
        model_id, options, works = msg
        try:
            conn.send((True, models[model_id].run(options, works)))
        except Exception as exc:
            conn.send((False, exc))


def patch(mode: str, specs: list[str]) -> None:
    """Make :func:`nmt.serve.registry.start_batchers` hand each batch to a child process."""
    original = registry.start_batchers

    def start_batchers(models: dict[str, Any], workers: int, *args: Any) -> Any:
        n = registry.cpu_workers(workers)[0]
        if mode == "fork":
            free: queue.Queue[Connection] = queue.Queue()
            ctx = mp.get_context("fork")
            for _ in range(n):
                parent, child = ctx.Pipe()
                ctx.Process(target=forked, args=(child, models), daemon=True).start()
                free.put(parent)

            def run_on(model_id: str, options: Any, works: Any) -> Any:
                conn = free.get()
                try:
                    conn.send((model_id, options, works))
                    ok, value = conn.recv()
                finally:
                    free.put(conn)
                if not ok:
                    raise value
                return value

        else:
            spawn = mp.get_context("spawn")
            parent, child = spawn.Pipe()
            spawn.Process(target=spawned, args=(child, specs, n), daemon=True).start()
            pending: dict[int, Future[Any]] = {}
            lock, ids = threading.Lock(), itertools.count()

            def receive() -> None:
                while True:
                    rid, (ok, value) = parent.recv()
                    future = pending.pop(rid)
                    future.set_result(value) if ok else future.set_exception(value)

            threading.Thread(target=receive, daemon=True).start()

            def run_on(model_id: str, options: Any, works: Any) -> Any:
                future: Future[Any] = Future()
                with lock:
                    rid = next(ids)
                    pending[rid] = future
                    parent.send((rid, model_id, options, works))
                return future.result()

        pool = original(models, workers, *args)
        for model_id, model in models.items():
            model.batcher.run = lambda options, works, m=model_id: run_on(m, options, works)
        return pool

    setattr(registry, "start_batchers", start_batchers)  # noqa: B010 - the patch itself


def main() -> None:
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode not in ("spawn", "fork") or not argv or argv[0] != "serve":
        sys.exit(__doc__)
    specs = [argv[i + 1] for i, a in enumerate(argv) if a in ("-m", "--model")]
    patch(mode, specs)
    sys.argv = ["cli", *argv]
    runpy.run_module("cli", run_name="__main__")


if __name__ == "__main__":
    main()
