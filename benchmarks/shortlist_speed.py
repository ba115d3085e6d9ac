"""Translation speed and BLEU with and without a vocabulary shortlist (``--shortlist``).

Loads a model folder that has a shortlist (``nmt shortlist``) once per setting and translates
Multi30k test_2016_flickr with the torch engine at beam 5 (and greedy with ``--beams 1 5``),
alternating the runs with and without the shortlist ``--repeats`` times so that a busy
machine's load falls on both alike; prints, per setting, the best sentences/s over the
repeats, cased sacreBLEU, and the mean number of candidate pieces per batch.

    python benchmarks/shortlist_speed.py --model runs/student --data data/multi30k
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from nmt.config import DecodeConfig
from nmt.data.parallel import corpus_path, read_lines
from nmt.decode.translate import Translator
from nmt.evaluate.score import corpus_scores


def timed(translator: Translator, src: list[str], decode: DecodeConfig) -> tuple[float, list[str]]:
    """Seconds to translate ``src`` with ``decode``, and the translations."""
    start = time.perf_counter()
    results = translator.translate_chunk(src, decode=decode)
    return time.perf_counter() - start, [r.text for r in results]


def mean_candidates(translator: Translator, src: list[str], decode: DecodeConfig) -> float:
    """Mean size of a batch's candidate set (the shortlist's union) over ``src``'s batches."""
    ids, _ = translator.source_ids(src, 1)
    batches = translator.row_batches(ids, [i for i, x in enumerate(ids) if x], decode)
    shortlist = translator.load_shortlist()
    sizes = [
        shortlist.batch_vocab(translator.source_batch([ids[r] for r in rows])).numel()
        for rows in batches
    ]
    return sum(sizes) / len(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder with a shortlist")
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src-lang", default="de")
    parser.add_argument("--tgt-lang", default="en")
    parser.add_argument("--beams", type=int, nargs="+", default=[5])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=0, help="as nmt translate --workers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lines", type=int, default=0, help="first N lines only (0 = all)")
    args = parser.parse_args()

    prefix = args.data / args.split
    src = read_lines(corpus_path(prefix, args.src_lang))
    ref = read_lines(corpus_path(prefix, args.tgt_lang))
    if args.lines:
        src, ref = src[: args.lines], ref[: args.lines]
    translator = Translator.load(args.model, device="cpu", workers=args.workers)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, workers {translator.workers}, float32, "
        f"{len(src)} sentences of {args.split}"
    )
    print("| beam | shortlist | sentences/s | BLEU | candidates per batch |")
    print("|---|---|---|---|---|")
    for beam in args.beams:
        decodes = {
            on: DecodeConfig(
                beam_size=beam,
                batch_size=args.batch_size,
                batch_tokens=10**9,
                length_penalty=args.length_penalty,
                shortlist=on,
            )
            for on in (False, True)
        }
        for d in decodes.values():
            translator.translate_chunk(src[:64], decode=d)  # warm-up (allocator, kernels)
        best = {False: float("inf"), True: float("inf")}
        hyps: dict[bool, list[str]] = {}
        for _ in range(args.repeats):
            for on, d in decodes.items():
                seconds, hyps[on] = timed(translator, src, d)
                best[on] = min(best[on], seconds)
        size = mean_candidates(translator, src, decodes[True])
        vocab = translator.model.cfg.vocab_size
        for on in (False, True):
            bleu = corpus_scores(hyps[on], [ref], metrics=("bleu",))["bleu"].score
            candidates = f"{size:.0f} of {vocab}" if on else f"{vocab}"
            print(
                f"| {beam} | {'yes' if on else 'no'} | {len(src) / best[on]:.1f} | {bleu:.2f} | "
                f"{candidates} |"
            )
        print(f"# beam {beam}: shortlist speed-up {best[False] / best[True]:.2f}x")


if __name__ == "__main__":
    main()
