"""Float32 linear layers on CPU: torch's own path (MKL sgemm) against oneDNN (``nmt.model.onednn``).

Times ``y = x W^T + b`` for the shapes of a model's decoder step (its d_model, ffn_dim and
vocabulary; the row counts are decoder rows: sentences × beam) and prints a table of
microseconds per call and GFLOP/s for each, with the thread counts given.

    python benchmarks/linear_kernels.py --model runs/demo/averaged --threads 1,2
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from nmt.model.checkpoint import read_config
from nmt.model.onednn import OneDNNLinear


def per_call_us(fn: Callable[[], torch.Tensor], min_seconds: float = 0.3) -> float:
    """Median over 5 timings of the mean time per call (microseconds)."""
    for _ in range(5):
        fn()
    calls = 1
    while True:  # calls per timing: enough for min_seconds / 5
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start > min_seconds / 5:
            break
        calls *= 2
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return sorted(times)[2] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (config.json)")
    parser.add_argument("--rows", default="8,32,160", help="comma-separated row counts")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    args = parser.parse_args()
    cfg = read_config(args.model)["model"]
    d, ffn, vocab = cfg["d_model"], cfg["ffn_dim"], cfg["vocab_size"]
    shapes = [
        ("self-attention q,k,v", d, 3 * d),
        ("attention out", d, d),
        ("ffn fc1", d, ffn),
        ("ffn fc2", ffn, d),
        ("output projection", d, vocab),
    ]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(
        "| layer | in → out | rows | threads | MKL (µs) | oneDNN (µs) | MKL GFLOP/s "
        "| oneDNN GFLOP/s | speed-up |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for name, n_in, n_out in shapes:
                w, b = torch.randn(n_out, n_in, generator=gen), torch.randn(n_out, generator=gen)
                onednn = OneDNNLinear(w, b)
                for rows in (int(r) for r in args.rows.split(",")):
                    x = torch.randn(rows, n_in, generator=gen)
                    mkl_us = per_call_us(partial(F.linear, x, w, b))
                    dnn_us = per_call_us(partial(onednn, x))
                    flop = 2 * rows * n_in * n_out
                    print(
                        f"| {name} | {n_in} → {n_out} | {rows} | {threads} | {mkl_us:.0f} | "
                        f"{dnn_us:.0f} | {flop / mkl_us / 1e3:.0f} | {flop / dnn_us / 1e3:.0f} | "
                        f"{mkl_us / dnn_us:.2f}× |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
