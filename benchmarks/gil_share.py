"""What a server's event loop costs the search workers through the GIL.

Two single-threaded search workers (:func:`nmt.decode.translate.worker_pool`, as ``nmt serve`` runs
them) translate the first ``--lines`` test_2016_flickr lines in batches of ``--batch-lines``
in arrival order, three ways, alternated ``--rounds`` times:

- alone;
- beside a thread of the same process that runs ``--busy-ms`` of pure Python (JSON round
  trips of a request body) out of every ``--period-ms``, as the server's event loop does at
  ~100 requests/s: it holds the GIL while the workers' Python between torch ops waits;
- beside the same thread in another process: it takes the same CPU time but not the GIL.

The gap between the last two is what the GIL costs; between the first and the last, what
the CPU time alone costs. Prints sentences/s for each.

    python benchmarks/gil_share.py --model runs/demo/averaged --data ../shared/data/multi30k
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
from pathlib import Path

from nmt.data.textio import read_lines
from nmt.decode.translate import Translator, worker_pool

BODY = {"src": ["Ein Hund läuft durch den Schnee."] * 3, "beam_size": 5, "return_scores": True}


def busy(stop: threading.Event, busy_s: float, period_s: float) -> None:
    """Pure Python for ``busy_s`` out of every ``period_s`` seconds until ``stop``."""
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < busy_s:
            json.loads(json.dumps(BODY))
        time.sleep(max(0.0, period_s - busy_s))


def busy_process(
    ready: mp.synchronize.Event, stop: mp.synchronize.Event, busy_s: float, period_s: float
) -> None:
    """:func:`busy` in a process of its own, from ``ready`` until ``stop`` is set."""
    local = threading.Event()
    thread = threading.Thread(target=busy, args=(local, busy_s, period_s))
    thread.start()
    ready.set()
    stop.wait()
    local.set()
    thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="Multi30k folder.")
    parser.add_argument("--lines", type=int, default=600)
    parser.add_argument("--batch-lines", type=int, default=20)
    parser.add_argument("--busy-ms", type=float, default=1.0)
    parser.add_argument("--period-ms", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lines = read_lines(args.data / "test_2016_flickr.de.gz")[: args.lines]
    translator = Translator.load(args.model, workers=1)
    list(translator.translate(lines[:32]))  # warm-up
    batches = [lines[i : i + args.batch_lines] for i in range(0, len(lines), args.batch_lines)]
    busy_s, period_s = args.busy_ms / 1000, args.period_ms / 1000

    def search() -> float:
        pool = worker_pool(2, 1)
        start = time.perf_counter()
        list(pool.map(lambda b: list(translator.translate(b)), batches))
        elapsed = time.perf_counter() - start
        pool.shutdown()
        return len(lines) / elapsed

    print("| round | alone | Python thread in the same process | in another process |")
    print("|---:|---:|---:|---:|")
    for round_ in range(1, args.rounds + 1):
        alone = search()
        stop = threading.Event()
        thread = threading.Thread(target=busy, args=(stop, busy_s, period_s))
        thread.start()
        same = search()
        stop.set()
        thread.join()
        ctx = mp.get_context("spawn")
        ready, pstop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=busy_process, args=(ready, pstop, busy_s, period_s))
        proc.start()
        ready.wait(120)  # the child has started (imports and all) before the timing does
        time.sleep(0.5)
        other = search()
        pstop.set()
        proc.join()
        print(f"| {round_} | {alone:.1f} | {same:.1f} | {other:.1f} |", flush=True)


if __name__ == "__main__":
    main()
