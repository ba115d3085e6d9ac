"""Translation speed and quality: nmt's PyTorch search vs its CTranslate2 export.

Exports the model to CTranslate2 (float32 and int8) in a temporary folder, then for each
engine and beam size loads the translator (untimed), warms it up, times translating the test
set with batches of ``--batch-size`` sentences, and prints a markdown table: sentences/s,
target tokens/s (EOS included), cased sacreBLEU, and the share of translations identical to
the PyTorch ones. CTranslate2 gets as many threads as torch uses (``intra_threads``).

    python benchmarks/compare_engines.py --model runs/demo/averaged --data data/multi30k
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nmt.config import DecodeConfig
from nmt.ct2 import CT2Translator
from nmt.data import corpus_path, read_lines
from nmt.export import export_ctranslate2
from nmt.score import corpus_scores
from nmt.translate import Translator

Loader = Callable[[DecodeConfig], Any]  # decode settings -> a loaded translator


def engines(model: Path, tmp: Path, threads: int, quantizations: list[str]) -> dict[str, Loader]:
    """Name → loader: ``torch``, then ``ctranslate2 <q>`` for each quantization."""
    loaders: dict[str, Loader] = {
        "torch": lambda d: Translator.load(model, d, device="cpu"),
    }
    for q in quantizations:
        folder = export_ctranslate2(model, tmp / q, quantization=q)
        loaders[f"ctranslate2 {q}"] = lambda d, f=folder: CT2Translator.load(
            f, d, device="cpu", intra_threads=threads
        )
    return loaders


def run(load: Loader, src: list[str], ref: list[str], beam: int, batch: int) -> dict[str, Any]:
    """Time one engine at one beam size over ``src``; its speed, BLEU and hypotheses."""
    decode = DecodeConfig(beam_size=beam, batch_size=batch, batch_tokens=10**9)
    translator = load(decode)
    translator.translate_chunk(src[:batch])  # warm-up (allocators, kernels, caches)
    start = time.perf_counter()
    hyps = [t.text for t in translator.translate_chunk(src)]
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) + 1 for ids in translator.tokenizer.encode(hyps))
    bleu = corpus_scores(hyps, [ref], metrics=("bleu",))["bleu"].score
    return {"sent_s": len(src) / seconds, "tok_s": tokens / seconds, "bleu": bleu, "hyps": hyps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="nmt model folder")
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src-lang", default="de")
    parser.add_argument("--tgt-lang", default="en")
    parser.add_argument("--beams", default="5,1")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quantizations", default="float32,int8")
    parser.add_argument("--threads", type=int, default=0, help="threads (0 = torch's default)")
    parser.add_argument("--limit", type=int, default=0, help="first N sentences (0 = all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    src = read_lines(corpus_path(args.data / args.split, args.src_lang))
    ref = read_lines(corpus_path(args.data / args.split, args.tgt_lang))
    if args.limit:
        src, ref = src[: args.limit], ref[: args.limit]
    import ctranslate2

    print(
        f"# {platform.processor() or platform.machine()}, {threads} threads, torch "
        f"{torch.__version__}, ctranslate2 {ctranslate2.__version__}, CPU, batch "
        f"{args.batch_size}, {len(src)} sentences of {args.split}.{args.src_lang}"
    )
    print("| engine | beam | sentences/s | target tokens/s | BLEU | same as torch |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="nmt-ct2-") as tmp:
        loaders = engines(args.model, Path(tmp), threads, args.quantizations.split(","))
        for beam in (int(b) for b in args.beams.split(",")):
            reference: list[str] = []
            for name, load in loaders.items():
                r = run(load, src, ref, beam, args.batch_size)
                reference = reference or r["hyps"]
                same = sum(a == b for a, b in zip(reference, r["hyps"])) / len(src)
                print(
                    f"| {name} | {beam} | {r['sent_s']:.1f} | {r['tok_s']:.0f} | "
                    f"{r['bleu']:.2f} | {same:.1%} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
