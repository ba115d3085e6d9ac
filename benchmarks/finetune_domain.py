"""Does fine-tuning adapt a model to a domain? A "dog" domain cut out of Multi30k.

The training pairs whose English side mentions a dog (the word "dog" or "dogs") are held out
of the base model's training and split into a fine-tuning set, a validation set and a test
set. The base model (``small``, de→en) trains on the rest for ``--base-minutes`` (or
``--base-steps`` updates, which a busy machine only makes slower, not shorter); it is then
fine-tuned with ``nmt train --init-from`` on the dog pairs (lower lr, short warm-up, early
stopping on the dog validation set). Prints BLEU and chrF of both models on the dog test set
and on test_2016_flickr (what the general domain loses), beam 5, with the command lines.

    python benchmarks/finetune_domain.py --data data/multi30k --work /tmp/ft --base-minutes 12
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from nmt.data.parallel import corpus_path, iter_lines
from nmt.evaluate.score import corpus_scores

DOG = re.compile(r"\bdogs?\b", re.IGNORECASE)


def write(prefix: Path, pairs: list[tuple[str, str]]) -> Path:
    for i, lang in enumerate(("de", "en")):
        text = "".join(pair[i] + "\n" for pair in pairs)
        Path(f"{prefix}.{lang}").write_text(text, encoding="utf-8")
    return prefix


def nmt(*args: str | Path) -> None:
    command = [sys.executable, "-m", "cli", *map(str, args)]
    print("$ nmt " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def scores(model: Path, src: Path, ref: Path, out: Path) -> tuple[float, float]:
    nmt("translate", src, "-m", model, "--beam-size", "5", "-o", out)
    hyps = out.read_text(encoding="utf-8").splitlines()
    refs = list(iter_lines(ref))
    result = corpus_scores(hyps, [refs], metrics=("bleu", "chrf"))
    return result["bleu"].score, result["chrf"].score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--base-minutes", type=float, default=12.0)
    parser.add_argument("--base-steps", type=int, default=0, help="instead of --base-minutes")
    parser.add_argument("--tune-steps", type=int, default=400)
    parser.add_argument("--test-pairs", type=int, default=500)
    parser.add_argument("--valid-pairs", type=int, default=200)
    args = parser.parse_args()
    work, data = args.work, args.data
    work.mkdir(parents=True, exist_ok=True)
    pairs = list(
        zip(
            iter_lines(corpus_path(data / "train", "de")),
            iter_lines(corpus_path(data / "train", "en")),
        )
    )
    dog = [p for p in pairs if DOG.search(p[1])]
    rest = [p for p in pairs if not DOG.search(p[1])]
    test, valid = dog[: args.test_pairs], dog[args.test_pairs : args.test_pairs + args.valid_pairs]
    tune = dog[args.test_pairs + args.valid_pairs :]
    print(
        f"{len(pairs):,} pairs: {len(dog):,} mention a dog ({len(tune):,} fine-tuning, "
        f"{len(valid):,} validation, {len(test):,} test), {len(rest):,} for the base model",
        file=sys.stderr,
    )
    write(work / "base", rest)
    write(work / "dog-tune", tune)
    write(work / "dog-valid", valid)
    write(work / "dog-test", test)
    base, tuned = work / "run-base", work / "run-tuned"
    start = time.monotonic()
    budget = (("--max-steps", str(args.base_steps)) if args.base_steps
              else ("--max-minutes", str(args.base_minutes)))  # fmt: skip
    nmt("train", "--train", work / "base", "--valid", data / "val", "--preset", "small",
        *budget, "--lr-schedule", "linear",
        "--warmup-steps", "300", "--output", base)  # fmt: skip
    base_s = time.monotonic() - start
    start = time.monotonic()
    nmt("train", "--init-from", base, "--train", work / "dog-tune", "--valid", work / "dog-valid",
        "--lr", "2e-4", "--warmup-steps", "50", "--max-steps", str(args.tune_steps),
        "--eval-every", "50", "--patience", "4", "--output", tuned)  # fmt: skip
    tune_s = time.monotonic() - start
    rows = []
    for name, model in (("base", base), ("fine-tuned", tuned)):
        dog_bleu, dog_chrf = scores(
            model, work / "dog-test.de", work / "dog-test.en", work / f"{name}.dog.en"
        )
        gen_bleu, gen_chrf = scores(
            model, data / "test_2016_flickr.de.gz", data / "test_2016_flickr.en.gz",
            work / f"{name}.flickr.en",
        )  # fmt: skip
        rows.append((name, dog_bleu, dog_chrf, gen_bleu, gen_chrf))
    print(f"base training {base_s / 60:.1f} min, fine-tuning {tune_s / 60:.1f} min")
    print("| model | dog test BLEU | dog test chrF | test_2016_flickr BLEU | chrF |")
    print("|---|---:|---:|---:|---:|")
    for name, *numbers in rows:
        print(f"| {name} | " + " | ".join(f"{x:.2f}" for x in numbers) + " |")


if __name__ == "__main__":
    main()
