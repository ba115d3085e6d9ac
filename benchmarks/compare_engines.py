"""Translation speed, memory and quality: nmt's PyTorch search, its CTranslate2 export, and
Hugging Face transformers ``generate()``.

Exports the model to CTranslate2 (float32 and int8) in a temporary folder. Then each engine
runs at each beam size in a process of its own (``multiprocessing``, spawn), so that its peak
RSS (``ru_maxrss``) is its own and no other engine's threads share the cores: it loads the
translator (untimed), warms it up on one batch, times translating the test set with batches
of ``--batch-size`` sentences sorted by length, and reports sentences/s and target tokens/s
(EOS included). The table adds cased sacreBLEU and the share of translations identical to the
PyTorch ones. Every engine gets the same threads: torch's (``--threads``, else torch's default,
which follows ``OMP_NUM_THREADS``), which CTranslate2 runs as that many single-threaded workers
(``nmt.decode.ct2.ct2_threads``). Peak RSS includes the interpreter and the imports (torch, which
``nmt.decode.ct2`` imports too; transformers).

The transformers row is a ``MarianMTModel`` with our model's shape (d_model, heads, ffn_dim,
layers, vocabulary, ReLU) and random weights: Marian is post-norm and puts sin and cos in
two halves of its position table, ours is pre-norm with final LayerNorms, so our weights do not
fit it. It measures speed only (no BLEU). A random model never ends a sentence, so each batch
generates as many new tokens as the longest PyTorch translation of the batch has (plus EOS),
and its target tokens/s counts the PyTorch translations' tokens. It needs transformers
(``pip install 'nmt[bench]'``) and is skipped with a note without it.

    python benchmarks/compare_engines.py --model runs/demo/averaged --data data/multi30k
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from translate_speed import peak_rss_mib  # benchmarks/ is on sys.path when run as a script

from nmt.config import DecodeConfig
from nmt.data.parallel import corpus_path, pad, read_lines
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from nmt.decode.translate import length_batches
from nmt.evaluate.score import corpus_scores
from nmt.interop.export import export_ctranslate2
from nmt.model.checkpoint import SPM_FILE, read_config

HF_LABEL = "transformers generate(), Marian (speed only, random weights)"


@dataclass(frozen=True)
class Job:
    """One engine at one beam size, run in a process of its own.

    Attributes:
        engine: ``torch``, ``ctranslate2`` or ``transformers``.
        label: the table's engine column.
        folder: the nmt model folder (torch, transformers) or the CTranslate2 export.
        beam / batch / threads: beam size (0 until a row sets it), sentences per batch, CPU
            threads.
        ref_lengths: transformers only: tokens of each PyTorch translation (EOS excluded).
    """

    engine: str
    label: str
    folder: Path
    beam: int
    batch: int
    threads: int
    ref_lengths: tuple[int, ...] = ()


def run_job(job: Job, src: list[str]) -> dict[str, Any]:
    """Time ``job`` over ``src`` (in the child process).

    Returns:
        ``seconds`` (translating ``src``, warm-up excluded), ``tokens`` (target tokens, EOS
        included), ``hyps`` (translations; ``None`` for transformers) and ``rss`` (MiB).
    """
    torch.set_num_threads(job.threads)
    if job.engine == "transformers":
        seconds, tokens, hyps = time_transformers(job, src), sum(job.ref_lengths) + len(src), None
    else:
        seconds, tokens, hyps = time_translator(job, src)
    return {"seconds": seconds, "tokens": tokens, "hyps": hyps, "rss": peak_rss_mib()}


def time_translator(job: Job, src: list[str]) -> tuple[float, int, list[str]]:
    """``(seconds, target tokens, translations)`` of nmt's torch or CTranslate2 engine."""
    from nmt.decode.ct2 import CT2Translator
    from nmt.decode.translate import Translator

    decode = DecodeConfig(beam_size=job.beam, batch_size=job.batch, batch_tokens=10**9)
    if job.engine == "torch":
        translator: Any = Translator.load(job.folder, decode, device="cpu")
    else:
        translator = CT2Translator.load(job.folder, decode, device="cpu")
    translator.translate_chunk(src[: job.batch])  # warm-up (allocators, kernels, caches)
    start = time.perf_counter()
    hyps = [t.text for t in translator.translate_chunk(src)]
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) + 1 for ids in translator.tokenizer.encode(hyps))
    return seconds, tokens, hyps


def marian_model(folder: Path) -> Any:
    """A ``MarianMTModel`` with the shape of the nmt model in ``folder``, random weights."""
    from transformers import MarianConfig, MarianMTModel

    m = read_config(folder)["model"]
    config = MarianConfig(
        vocab_size=m["vocab_size"],
        d_model=m["d_model"],
        encoder_layers=m["n_encoder_layers"],
        decoder_layers=m["n_decoder_layers"],
        encoder_attention_heads=m["n_heads"],
        decoder_attention_heads=m["n_heads"],
        encoder_ffn_dim=m["ffn_dim"],
        decoder_ffn_dim=m["ffn_dim"],
        max_position_embeddings=m["max_positions"],
        activation_function="relu",
        scale_embedding=True,
        dropout=0.0,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    return MarianMTModel(config).eval()


@torch.inference_mode()
def time_transformers(job: Job, src: list[str]) -> float:
    """Seconds for ``generate()`` over ``src`` in nmt's batches: the same tokenization
    (source ids + EOS), batches and beam; ``max_new_tokens`` per batch from ``ref_lengths``."""
    model = marian_model(job.folder)
    ids = Tokenizer(job.folder / SPM_FILE).encode(src)
    batches = length_batches([len(x) + 1 for x in ids], 10**9, job.batch)

    def generate(batch: list[int]) -> None:
        inputs = pad([ids[i] for i in batch], suffix=EOS_ID)
        model.generate(
            input_ids=inputs,
            attention_mask=inputs != PAD_ID,
            num_beams=job.beam,
            do_sample=False,
            max_new_tokens=max(job.ref_lengths[i] for i in batch) + 1,
        )

    generate(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches:
        generate(batch)
    return time.perf_counter() - start


def run_in_process(job: Job, src: list[str]) -> dict[str, Any]:
    """:func:`run_job` in a fresh spawned process (its own RSS, its own threads)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_job, (job, src))


def engine_jobs(args: argparse.Namespace, tmp: Path, threads: int) -> list[Job]:
    """torch, then CTranslate2 for each quantization (exported into ``tmp``)."""
    jobs = [Job("torch", "torch", args.model, 0, args.batch_size, threads)]
    for q in args.quantizations.split(","):
        folder = export_ctranslate2(args.model, tmp / q, quantization=q)
        jobs.append(Job("ctranslate2", f"ctranslate2 {q}", folder, 0, args.batch_size, threads))
    return jobs


def transformers_version() -> str | None:
    """The installed transformers version, or ``None`` (the row is then skipped)."""
    try:
        import transformers
    except ImportError:
        return None
    return str(transformers.__version__)


def print_header(args: argparse.Namespace, threads: int, n: int, hf: str | None) -> None:
    """The machine and versions as a comment line, then the table's header."""
    import ctranslate2

    print(
        f"# {platform.processor() or platform.machine()}, {threads} threads, torch "
        f"{torch.__version__}, ctranslate2 {ctranslate2.__version__}, transformers "
        f"{hf or 'not installed'}, CPU, batch {args.batch_size}, {n} sentences of "
        f"{args.split}.{args.src_lang}"
    )
    if hf is None:
        print("# transformers is not installed: no generate() row (pip install 'nmt[bench]')")
    print(
        "| engine | beam | sentences/s | target tokens/s | peak RSS (MiB) | BLEU | same as torch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")


def print_row(label: str, beam: int, r: dict[str, Any], n: int, bleu: str, same: str) -> None:
    """One table row from :func:`run_job`'s result over ``n`` sentences."""
    print(
        f"| {label} | {beam} | {n / r['seconds']:.1f} | {r['tokens'] / r['seconds']:.0f} | "
        f"{r['rss']:.0f} | {bleu} | {same} |",
        flush=True,
    )


def bench_beam(
    jobs: list[Job], beam: int, src: list[str], ref: list[str], hf: str | None, tokenizer: Any
) -> None:
    """Print the rows of one beam size: each engine of ``jobs``, then transformers."""
    reference: list[str] = []
    for job in jobs:
        r = run_in_process(replace(job, beam=beam), src)
        reference = reference or r["hyps"]
        bleu = corpus_scores(r["hyps"], [ref], metrics=("bleu",))["bleu"].score
        same = sum(a == b for a, b in zip(reference, r["hyps"])) / len(src)
        print_row(job.label, beam, r, len(src), f"{bleu:.2f}", f"{same:.1%}")
    if hf is not None:
        lengths = tuple(len(ids) for ids in tokenizer.encode(reference))
        job = replace(
            jobs[0], engine="transformers", label=HF_LABEL, beam=beam, ref_lengths=lengths
        )
        r = run_in_process(job, src)
        print_row(HF_LABEL, beam, r, len(src), "–", "–")


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
    threads = args.threads or torch.get_num_threads()
    src = read_lines(corpus_path(args.data / args.split, args.src_lang))
    ref = read_lines(corpus_path(args.data / args.split, args.tgt_lang))
    if args.limit:
        src, ref = src[: args.limit], ref[: args.limit]
    hf = transformers_version()
    print_header(args, threads, len(src), hf)
    tokenizer = Tokenizer(args.model / SPM_FILE)
    with tempfile.TemporaryDirectory(prefix="nmt-ct2-") as tmp:
        jobs = engine_jobs(args, Path(tmp), threads)
        for beam in (int(b) for b in args.beams.split(",")):
            bench_beam(jobs, beam, src, ref, hf, tokenizer)


if __name__ == "__main__":
    main()
