"""Speed of the training batch feed alone: target tokens/s that one CPU thread pads into
batches from a prepared (memory-mapped) Multi30k store, no model involved.

Prepares Multi30k de-en once into a temporary data folder (an 8,000-piece SentencePiece
model), plans an epoch of ``--batch-tokens`` batches (base and big use 4,096) and times
:meth:`nmt.train.feed.UpdateFeed.collate` over every update of the epoch, repeated for at
least ``--seconds`` seconds, in the calling thread (the trainer runs it in one background
thread). Torch is held to one intra-op thread.

    python benchmarks/feed_speed.py --data ../shared/data/multi30k --batch-tokens 4096 \
        [--store /tmp/feed-store]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from nmt.config import TrainConfig
from nmt.data.store import open_store, prepare
from nmt.train.distributed import DistEnv
from nmt.train.feed import UpdateFeed


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(data_dir: Path, batch_tokens: int, seconds: float) -> tuple[float, int, float]:
    """(target tokens/s, batches collated, mean sentences per batch) of one thread."""
    cfg = TrainConfig(batch_tokens=batch_tokens, device="cpu")
    feed = UpdateFeed(open_store(data_dir, cfg.max_len), cfg, DistEnv(), torch.device("cpu"))
    steps = [feed.steps(1)[i] for i in range(feed.steps_per_epoch)]
    for step in steps[:20]:  # page the store in, warm the allocator
        feed.collate(step)
    tokens = batches = sentences = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for step in steps:
            for batch in feed.collate(step):
                tokens += batch.n_tgt_tokens
                batches += 1
                sentences += len(batch.src)
    elapsed = time.perf_counter() - start
    return tokens / elapsed, batches, sentences / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[4096])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--store",
        type=Path,
        help="data folder to prepare once and reuse (default: a temporary one)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.store or Path(tmp) / "data"
        if not (data_dir / "meta.json").is_file():
            prepare(args.data / "train", data_dir, "de", "en", vocab_size=8000)
        print(f"{cpu_name()}, torch {torch.__version__}, one thread\n")
        print("| batch tokens | sentences/batch | batches | target tokens/s |")
        print("|---:|---:|---:|---:|")
        for batch_tokens in args.batch_tokens:
            rate, batches, per_batch = measure(data_dir, batch_tokens, args.seconds)
            print(f"| {batch_tokens:,} | {per_batch:.0f} | {batches:,} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
