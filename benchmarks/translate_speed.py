"""Translation speed and quality of ``nmt translate`` on Multi30k test_2016_flickr.

Loads the model once, then times translating the whole test set at each beam size (batch of
``--batch-size`` sentences, as in the numbers we compare with) and prints a table: sentences/s,
target tokens/s, peak RSS and cased sacreBLEU. ``--workers`` lists the CPU layouts to time:
1 = one batch at a time on all threads, 0 = one single-threaded worker per thread (the
default of ``nmt translate``). ``--dtypes`` takes fp32 (linear layers through oneDNN on CPU,
the default), fp32-mkl (torch's own float32 linear, MKL on CPU), bf16 and int8. ``--features``
adds rows for decoding features (issue 12): ``alignment`` (beam 5 with word alignment) and
``sampling`` (top-k 10, seed 1), each with its own sentences/s.

    python benchmarks/translate_speed.py --model runs/demo/averaged --data data/multi30k
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

from nmt.config import DecodeConfig
from nmt.data.parallel import corpus_path, read_lines
from nmt.decode.translate import Translator
from nmt.evaluate.score import corpus_scores


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    model: Path,
    src: list[str],
    ref: list[str],
    beam: int,
    batch: int,
    device: str,
    length_penalty: float,
    dtype: str = "fp32",
    quantize: str | None = None,
    workers: int = 1,
    onednn: bool = True,
    feature: str = "",
) -> dict[str, float | str]:
    decode = DecodeConfig(
        beam_size=beam,
        batch_size=batch,
        batch_tokens=10**9,
        length_penalty=length_penalty,
        alignment=feature == "alignment",
        sampling_topk=10 if feature == "sampling" else 1,
        seed=1 if feature == "sampling" else None,
    )
    translator = Translator.load(
        model,
        decode,
        device=device,
        dtype=dtype,
        quantize=quantize,
        workers=workers,
        onednn=onednn,
    )
    translator.translate_chunk(src[:64])  # warm-up (allocator, kernels)
    start = time.perf_counter()
    results = translator.translate_chunk(src)
    seconds = time.perf_counter() - start
    hyps = [r.text for r in results]
    tokens = sum(len(ids) + 1 for ids in translator.tokenizer.encode(hyps))  # + EOS
    bleu = corpus_scores(hyps, [ref], metrics=("bleu",))["bleu"].score
    return {
        "beam": beam,
        "sent_s": len(src) / seconds,
        "tok_s": tokens / seconds,
        "seconds": seconds,
        "bleu": bleu,
        "rss": peak_rss_mib(),
        "layout": f"{translator.workers}×{translator.worker_threads or 1}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src-lang", default="de")
    parser.add_argument("--tgt-lang", default="en")
    parser.add_argument("--beams", default="5,1")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length-penalty", type=float, default=DecodeConfig.length_penalty)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtypes", default="fp32", help="comma-separated: fp32, fp32-mkl, bf16, int8"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--workers", default="1,0", help="comma-separated worker counts (0 = one per thread)"
    )
    parser.add_argument(
        "--features", default="", help="comma-separated extra rows: alignment, sampling"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    src = read_lines(corpus_path(args.data / args.split, args.src_lang))
    ref = read_lines(corpus_path(args.data / args.split, args.tgt_lang))
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, device {args.device}, batch {args.batch_size}, "
        f"{len(src)} sentences"
    )
    print(
        "| weights | workers × threads | beam | sentences/s | target tokens/s | seconds | BLEU "
        "| peak RSS (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind in args.dtypes.split(","):
        dtype, quantize = ("fp32", "int8") if kind == "int8" else (kind.split("-")[0], None)
        for workers in (int(w) for w in args.workers.split(",")):
            # (beam, feature) rows: each beam size plain, then each feature (sampling draws
            # one output, so it runs at beam 1; alignment at beam 5).
            rows = [(int(b), "") for b in args.beams.split(",")]
            features = filter(None, args.features.split(","))
            rows += [(1 if f == "sampling" else 5, f) for f in features]
            for beam, feature in rows:
                r = run(
                    args.model,
                    src,
                    ref,
                    beam,
                    args.batch_size,
                    args.device,
                    args.length_penalty,
                    dtype,
                    quantize,
                    workers,
                    onednn=kind != "fp32-mkl",
                    feature=feature,
                )
                print_row(f"{kind} {feature}".strip(), r)


def print_row(kind: str, r: dict[str, float | str]) -> None:
    print(
        f"| {kind} | {r['layout']} | {r['beam']} | {r['sent_s']:.1f} | {r['tok_s']:.0f} | "
        f"{r['seconds']:.2f} | {r['bleu']:.2f} | {r['rss']:.0f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
