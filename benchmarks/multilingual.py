"""One multilingual model against one model per pair, at the same budget (Multi30k).

Trains the ``small`` preset twice with the same recipe and number of updates: a de→en model
on the de-en pairs, and one de,fr,cs→en model on the three pairs (``--pairs``, temperature
``--temperature``). Multi30k is multi-way parallel, so each pair has the same 29,000 lines;
with the same number of updates the multilingual model sees a third of the de-en pairs the
single model sees. Prints BLEU and chrF of each model on test_2016_flickr (beam 5) for every
direction it translates, the minutes each run took, and the command lines.

    python benchmarks/multilingual.py --data data/multi30k --work /tmp/multi --steps 1500
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from nmt.data.parallel import corpus_path, iter_lines
from nmt.evaluate.score import corpus_scores

SOURCES = ("de", "fr", "cs")


def nmt(*args: str | Path) -> float:
    """Run ``nmt ARGS``; returns the wall time (s)."""
    command = [sys.executable, "-m", "cli", *map(str, args)]
    print("$ nmt " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    start = time.monotonic()
    subprocess.run(command, check=True)
    return time.monotonic() - start


def scores(model: Path, src: Path, ref: Path, out: Path) -> tuple[float, float]:
    nmt("translate", src, "-m", model, "--beam-size", "5", "-o", out)
    hyps = out.read_text(encoding="utf-8").splitlines()
    result = corpus_scores(hyps, [list(iter_lines(ref))], metrics=("bleu", "chrf"))
    return result["bleu"].score, result["chrf"].score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500, help="updates of each run")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    data, work = args.data, args.work
    common = [
        "--train", data / "train", "--valid", data / "val", "--preset", "small",
        "--max-steps", args.steps, "--eval-every", args.steps, "--lr-schedule", "linear",
        "--warmup-steps", 300, "--dtype", args.dtype,
    ]  # fmt: skip
    minutes = {
        "de→en": nmt("train", *common, "--src-lang", "de", "--tgt-lang", "en",
                     "-o", work / "de-en", "--overwrite") / 60,
        "de,fr,cs→en": nmt("train", *common, "--pairs", ",".join(f"{s}-en" for s in SOURCES),
                           "--pair-sampling-temperature", args.temperature,
                           "-o", work / "multi", "--overwrite") / 60,
    }  # fmt: skip
    ref = corpus_path(data / "test_2016_flickr", "en")
    rows = []
    for name, folder, sources in (("de→en", "de-en", ("de",)), ("de,fr,cs→en", "multi", SOURCES)):
        for lang in sources:
            src = corpus_path(data / "test_2016_flickr", lang)
            bleu, chrf = scores(work / folder, src, ref, work / f"{folder}.{lang}-en.hyp")
            rows.append(f"| {name} | {lang}→en | {bleu:.2f} | {chrf:.2f} | {minutes[name]:.1f} |")
    print(f"\n{args.steps} updates each, small preset, dtype {args.dtype}, beam 5\n")
    print("| model | direction | BLEU | chrF | training minutes |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
