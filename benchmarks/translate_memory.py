"""Does ``nmt translate``'s memory grow with the input? Peak RSS of the process translating
10k and 1M lines (and any other ``--lines``), plain and gzipped, with a tiny model.

The model is the ``tiny`` preset trained for ``--steps`` updates on Multi30k (its outputs are
poor but end with EOS, so the search runs as for a real model), unless ``--model`` names a
model folder. Inputs are Multi30k's training source lines cycled to each size, written under
``--work``. Each size runs in its own process (``python -m cli translate``, greedy, outputs
of at most ``--max-len-b`` tokens, written to a file); its peak RSS is the kernel's
``ru_maxrss`` for that process (``os.wait4``). Prints a markdown table.

    python benchmarks/translate_memory.py --data data/multi30k --work /tmp/tm --lines 10000,1000000
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from nmt.data.parallel import corpus_path, iter_lines

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "cli", *map(str, args)]


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` from the repository; returns (seconds, peak RSS in MiB).

    Raises:
        RuntimeError: the command failed (its stderr's tail attached).
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()  # drained while it runs (the progress bar writes there)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def write_input(lines: list[str], n: int, path: Path) -> Path:
    """``n`` lines cycled from ``lines``, plain or gzipped by ``path``'s suffix."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for i in range(n):
            f.write(lines[i % len(lines)] + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--lines", default="10000,1000000")
    parser.add_argument("--model", type=Path, help="a model folder (default: train a tiny one)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-len-b", type=int, default=8)
    parser.add_argument("--gz", action="store_true", help="also time gzipped inputs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    model = args.model
    if model is None:
        model = args.work / "tiny"
        if not (model / "model.safetensors").is_file():
            subprocess.run(
                cli("train", "--train", data / "train", "--valid", data / "val", "--preset",
                    "tiny", "--max-steps", args.steps, "--eval-every", args.steps,
                    "--dtype", "fp32", "--output", model),
                cwd=REPO, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
    source = list(iter_lines(corpus_path(data / "train", "de")))
    print(
        f"# {platform.processor() or platform.machine()}, model {model}, greedy, "
        f"--max-len-a 0 --max-len-b {args.max_len_b}, float32"
    )
    print("| input lines | input | seconds | sentences/s | peak RSS (MiB) |")
    print("|---:|---|---:|---:|---:|")
    for n in (int(x) for x in args.lines.split(",")):
        for suffix in (".de", ".de.gz") if args.gz else (".de",):
            path = write_input(source, n, args.work / f"in-{n}{suffix}")
            out = args.work / f"out-{n}.en"
            seconds, rss = run_measured(
                cli("translate", path, "-m", model, "-o", out, "--beam-size", "1",
                    "--max-len-a", "0", "--max-len-b", args.max_len_b)
            )  # fmt: skip
            kind = "gzip" if suffix.endswith(".gz") else "plain"
            print(f"| {n:,} | {kind} | {seconds:.1f} | {n / seconds:,.0f} | {rss:,.0f} |")
            path.unlink()
            out.unlink()


if __name__ == "__main__":
    main()
