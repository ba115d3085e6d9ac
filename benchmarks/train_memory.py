"""Does training memory grow with the corpus? Peak RSS of ``nmt train`` on Multi30k and on
Multi30k repeated ``--scale`` times (29,000 × scale pairs).

Both corpora are prepared with ``nmt prepare`` (the larger with the smaller's SentencePiece
model, so the model and batches have the same shapes), then ``nmt train --data`` runs the
same ``--steps`` updates of the ``small`` preset on each, with one validation (50 lines) at
the end. Prints a markdown table: preparing time and peak RSS, training peak RSS, target
tokens/s and the share of the step spent waiting for batches.

    python benchmarks/train_memory.py --data data/multi30k --scale 20 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from train_scaling import (  # benchmarks/ is on sys.path when run as a script
    run_measured,
    window_means,
)

from nmt.data import corpus_path, iter_lines


def repeat_corpus(src_prefix: Path, out_prefix: Path, scale: int) -> None:
    """Write ``out_prefix.{de,en}``: the corpus ``scale`` times over (plain text)."""
    for lang in ("de", "en"):
        text = "".join(line + "\n" for line in iter_lines(corpus_path(src_prefix, lang)))
        with open(f"{out_prefix}.{lang}", "w", encoding="utf-8") as f:
            for _ in range(scale):
                f.write(text)


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "cli", *map(str, args)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    data = args.data.resolve()
    env = dict(os.environ)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for lang in ("de", "en"):
            lines = list(iter_lines(corpus_path(data / "val", lang)))[:50]
            (tmp / f"valid.{lang}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        repeat_corpus(data / "train", tmp / "big", args.scale)
        corpora = [("Multi30k", data / "train"), (f"Multi30k × {args.scale}", tmp / "big")]
        for i, (name, prefix) in enumerate(corpora):
            prepared = tmp / f"prepared-{i}"
            spm = ["--spm", tmp / "prepared-0" / "spm.model"] if i else []
            start = time.monotonic()
            status, prep_rss = run_measured(
                cli("prepare", "--train", prefix, "--out", prepared, *spm), env
            )
            prep_s = time.monotonic() - start
            assert status == 0, f"nmt prepare failed ({status})"
            pairs = json.loads((prepared / "meta.json").read_text())["pairs"]
            out = tmp / f"run-{i}"
            status, train_rss = run_measured(
                cli(
                    "train",
                    "--data",
                    prepared,
                    "--valid",
                    tmp / "valid",
                    "--out",
                    out,
                    "--preset",
                    "small",
                    "--max-steps",
                    args.steps,
                    "--eval-every",
                    1_000_000,
                    "--save-every",
                    1_000_000,
                    "--device",
                    "cpu",
                ),  # fmt: skip
                env,
            )
            assert status == 0, f"nmt train failed ({status})"
            tok_s, wait = window_means(out / "metrics.jsonl")
            rows.append((name, pairs, prep_s, prep_rss, train_rss, tok_s, wait))
    print(f"# {os.cpu_count()} cores, small preset, {args.steps} updates, default dtype")
    print("| corpus | pairs | prepare (s) | prepare peak RSS (MiB) | train peak RSS (MiB) "
          "| target tokens/s | waiting for data |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, pairs, prep_s, prep_rss, train_rss, tok_s, wait in rows:
        print(f"| {name} | {pairs:,} | {prep_s:.0f} | {prep_rss:,.0f} | {train_rss:,.0f} | "
              f"{tok_s:,.0f} | {100 * wait:.2f}% |")  # fmt: skip
    print(f"\ntrain peak RSS ratio: {rows[1][4] / rows[0][4]:.2f}×")


if __name__ == "__main__":
    main()
