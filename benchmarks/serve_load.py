"""Load on ``nmt serve``: requests/s and latency percentiles at 1, 8 and 64 concurrent clients,
single-line and 32-line requests, dynamic batching on and off, beside ``nmt translate``'s
sentences/s on the same lines (``Translator.translate`` in process, one list, timed before and
after the server rows: "vs file" divides by the mean of the two, as the machine's speed drifts).

Clients are threads of this process on 127.0.0.1 (a closed loop: each sends its next request
when the last is answered) for ``--seconds`` per row; the load generator shares the CPU with
the server, so its CPU time per row is printed beside the result, and so is the server's,
split into its event loop (HTTP, validation, tokenizing) and its other threads (the search
workers, read from ``/proc`` on Linux). Batching off is
``--batch-tokens 1`` (every batch holds one request).

    python benchmarks/serve_load.py --model runs/demo/averaged --data ../shared/data/multi30k

``--engine ctranslate2`` (a folder written by ``nmt export``) times both the in-process
reference and the server with CTranslate2 (``load_translator``, the function ``nmt translate``
and ``nmt serve`` load models with).

``--clients 64 --lines-per-request 1 --batching on`` runs only the 64 single-line clients row
(the in-process reference always runs).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from serve_client import ServerProcess, request  # noqa: E402

from nmt.decode.loading import ENGINES, load_translator  # noqa: E402


def read_lines(data: Path, n: int) -> list[str]:
    with gzip.open(data / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line, _ in zip(f, range(n))]


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process ``pid``, by thread id, from
    ``/proc`` (Linux; empty elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def load(url: str, lines: list[str], clients: int, per_request: int, seconds: float) -> dict:
    """Closed-loop clients for ``seconds``; requests/s, sentences/s, latency percentiles (ms)
    and this process's CPU time (s)."""
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    cpu0 = time.process_time()

    def client(c: int) -> None:
        i = c * per_request
        while time.monotonic() < stop:
            src = [lines[(i + k) % len(lines)] for k in range(per_request)]
            start = time.perf_counter()
            status, body = request(url + "/v1/translate", {"src": src}, timeout=120)
            with lock:
                if status == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:  # e.g. 504 when the CPU is overloaded: counted, not timed
                    errors.append(status)
            i += per_request * clients

    begin = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - begin
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "req_s": len(latencies) / elapsed,
        "sent_s": len(latencies) * per_request / elapsed,
        "sentences": (len(latencies) + len(errors)) * per_request,
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
        "cpu_s": time.process_time() - cpu0,
        "seconds": elapsed,
        "errors": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="Multi30k folder.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Per row.")
    parser.add_argument("--clients", default="1,8,64", help="Comma-separated client counts.")
    parser.add_argument(
        "--lines-per-request", default="1,32", help="Comma-separated request sizes, in lines."
    )
    parser.add_argument(
        "--batching", default="on,off", help="on, off or on,off (batching off: --batch-tokens 1)."
    )
    parser.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="Engine of both the reference and the server.",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help='More options for nmt serve, e.g. "--max-wait-ms 30 --workers 2".',
    )
    parser.add_argument(
        "--launcher",
        default="",
        help='Run the server with this instead of "python -m cli", e.g. "python '
        'benchmarks/search_process_server.py fork".',
    )
    args = parser.parse_args()
    if not set(args.batching.split(",")) <= {"on", "off"}:
        parser.error(f"--batching {args.batching}: give on, off or on,off")
    lines = read_lines(args.data, 1000)

    translator = load_translator(args.model, engine=args.engine)
    translator.translate(lines[:32])  # warm-up

    def file_rate() -> float:
        start = time.perf_counter()
        list(translator.translate(lines))
        return len(lines) / (time.perf_counter() - start)

    before = file_rate()
    one = load_translator(args.model, engine=args.engine, workers=1)
    alone = []
    for line in lines[:20]:
        t0 = time.perf_counter()
        list(one.translate([line]))
        alone.append((time.perf_counter() - t0) * 1000)
    rows = []
    modes = {"on": [], "off": ["--batch-tokens", "1"]}
    for batching in args.batching.split(","):
        extra = modes[batching]
        log = Path(f"/tmp/serve_load_{batching}.log")
        server_args = [
            "-m",
            f"bench={args.model}",
            "--engine",
            args.engine,
            *extra,
            *shlex.split(args.server_args),
        ]
        launcher = shlex.split(args.launcher) or None
        with ServerProcess(server_args, log, launcher) as server:
            request(server.url + "/v1/translate", {"src": lines[:32]})  # warm-up
            for per_request in map(int, args.lines_per_request.split(",")):
                for clients in map(int, args.clients.split(",")):
                    batches = request(server.url + "/health")[1]["batches"]
                    pid = server.proc.pid
                    cpu0 = thread_cpu(pid)
                    r = load(server.url, lines, clients, per_request, args.seconds)
                    cpu = {t: c - cpu0.get(t, 0.0) for t, c in thread_cpu(pid).items()}
                    r["batches"] = request(server.url + "/health")[1]["batches"] - batches
                    # the event loop is the main thread; the others are mostly the workers
                    r["loop_cpu"] = cpu.get(pid, float("nan")) / r["seconds"]
                    r["other_cpu"] = sum(c for t, c in cpu.items() if t != pid) / r["seconds"]
                    rows.append((batching, clients, per_request, r))
                    print(
                        f"{batching} {clients}x{per_request}: {r['sent_s']:.1f} sentences/s",
                        file=sys.stderr,
                        flush=True,
                    )
    after = file_rate()  # the machine's speed drifts: the reference is the mean of two runs
    reference = (before + after) / 2
    print(
        f"nmt translate (engine {args.engine}, in process, {len(lines)} lines, beam 5): "
        f"{before:.1f} sentences/s before the server rows, {after:.1f} after "
        f"(vs file: their mean, {reference:.1f})"
    )
    print(f"Translator.translate one line (workers=1): median {statistics.median(alone):.1f} ms")
    print(
        "| batching | clients | lines/request | requests/s | sentences/s | vs file | p50 ms "
        "| p95 ms | p99 ms | errors | lines/batch | load-generator CPU s / s "
        "| server event loop CPU s / s | server other threads CPU s / s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for batching, clients, per_request, r in rows:
        print(
            f"| {batching} | {clients} | {per_request} | {r['req_s']:.1f} | "
            f"{r['sent_s']:.1f} | {r['sent_s'] / reference:.0%} | {r['p50']:.0f} | "
            f"{r['p95']:.0f} | {r['p99']:.0f} | {r['errors']} | "
            f"{r['sentences'] / max(r['batches'], 1):.1f} | "
            f"{r['cpu_s'] / r['seconds']:.2f} | {r['loop_cpu']:.2f} | {r['other_cpu']:.2f} |"
        )


if __name__ == "__main__":
    main()
