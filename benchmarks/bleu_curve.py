"""Validation BLEU against minutes of training, read from a run's ``metrics.jsonl``.

python benchmarks/bleu_curve.py runs/demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by nmt train")
    args = parser.parse_args()
    records = [json.loads(line) for line in (args.run / "metrics.jsonl").open(encoding="utf-8")]
    train = [r for r in records if r["type"] == "train"]
    print("| step | minutes | train loss | valid ppl | valid BLEU | valid chrF | tgt tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in (r for r in records if r["type"] == "valid"):
        before = [t for t in train if t["step"] <= r["step"]]
        last = before[-1] if before else None
        minutes = (last["elapsed_s"] / 60) if last else 0.0
        loss = f"{last['loss']:.3f}" if last else "-"
        speed = f"{last['tgt_tokens_per_s']:,.0f}" if last else "-"
        print(
            f"| {r['step']} | {minutes:.1f} | {loss} | {r['ppl']:.2f} | {r['bleu']:.2f} | "
            f"{r['chrf']:.2f} | {speed} |"
        )


if __name__ == "__main__":
    main()
