"""Int8 in the torch engine: the candidates for ``--quantization int8``, side by side.

For a model folder, each candidate quantizes the linear layers of a fresh copy of the model
(the tied output projection stays float32 through oneDNN in every row, as in ``nmt
translate``), then the script measures:

- sentences/s translating the first ``--lines`` sentences of test_2016_flickr (beam
  ``--beam``, one batch at a time, median of ``--repeats`` rounds alternated over the rows);
- the mean absolute difference of the teacher-forced log-probabilities of the reference
  tokens (and EOS) of the first ``--pairs`` validation pairs against float32
  (``tests/agreement.py``'s ``mean_log_prob_error``, the figure of tests/README.md).

Candidates: ``float32`` (oneDNN, the reference); ``onednn`` (:mod:`nmt.model.int8`, what
``--quantization int8`` runs); ``torchao-dynamic`` (``torchao.quantization.quantize_`` with
``Int8DynamicActivationInt8WeightConfig``); ``torchao-weight-only`` (``Int8WeightOnlyConfig``);
``quantize_dynamic`` (``torch.ao.quantization.quantize_dynamic``, fbgemm, deprecated: what
``--quantization int8`` ran before). The torchao rows need ``pip install torchao`` (``nmt[bench]``)
and are left out with a note without it.

    python benchmarks/int8_candidates.py --model runs/demo/averaged --data data/multi30k
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agreement import mean_log_prob_error  # noqa: E402

from nmt.config import DecodeConfig  # noqa: E402
from nmt.data.parallel import corpus_path, read_lines  # noqa: E402
from nmt.data.vocab import load_tokenizer  # noqa: E402
from nmt.decode.translate import Translator  # noqa: E402
from nmt.model.checkpoint import load_model  # noqa: E402
from nmt.model.int8 import quantize_int8  # noqa: E402
from nmt.model.onednn import use_onednn  # noqa: E402
from nmt.model.transformer import Transformer  # noqa: E402


def torchao(config: str) -> Callable[[Transformer], Transformer] | None:
    """A candidate quantizing with torchao's ``config`` class, or None without torchao."""
    try:
        from torchao import quantization
    except ImportError:
        return None

    def quantize(model: Transformer) -> Transformer:
        quantization.quantize_(model, getattr(quantization, config)())
        return model

    return quantize


def fbgemm(model: Transformer) -> Transformer:
    """The previous ``--quantization int8``: torch.ao's deprecated dynamic quantization."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-any-return]
            model, {torch.nn.Linear}, dtype=torch.qint8
        )


def candidates() -> tuple[dict[str, Callable[[Transformer], Transformer]], list[str]]:
    """The candidates by name, and notes on those left out."""
    found: dict[str, Callable[[Transformer], Transformer] | None] = {
        "float32": lambda m: m,
        "onednn": quantize_int8,
        "torchao-dynamic": torchao("Int8DynamicActivationInt8WeightConfig"),
        "torchao-weight-only": torchao("Int8WeightOnlyConfig"),
        "quantize_dynamic": fbgemm,
    }
    notes = [f"{k}: torchao is not installed" for k, v in found.items() if v is None]
    return {k: v for k, v in found.items() if v is not None}, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="nmt model folder")
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--lines", type=int, default=200, help="test sentences timed")
    parser.add_argument("--pairs", type=int, default=200, help="validation pairs scored")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated candidate names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    src = read_lines(corpus_path(args.data / "test_2016_flickr", "de"))[: args.lines]
    tokenizer = load_tokenizer(args.model)
    val_src, val_tgt = (
        tokenizer.encode(read_lines(corpus_path(args.data / "val", lang))[: args.pairs])
        for lang in ("de", "en")
    )
    reference, _ = load_model(args.model)
    reference.eval()
    found, notes = candidates()
    if args.only:
        found = {k: v for k, v in found.items() if k in args.only.split(",")}
    decode = DecodeConfig(beam_size=args.beam, batch_size=args.batch_size, batch_tokens=10**9)
    models, translators = {}, {}
    for name, quantize in found.items():
        models[name] = use_onednn(quantize(copy.deepcopy(reference)), layers=name == "float32")
        translators[name] = Translator(models[name], tokenizer, decode, workers=1)
        translators[name].translate_chunk(src[: args.batch_size])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in translators}
    for _ in range(args.repeats):
        for name, translator in translators.items():
            start = time.perf_counter()
            translator.translate_chunk(src)
            seconds[name].append(time.perf_counter() - start)
    print(
        f"# {len(src)} sentences, beam {args.beam}, batches of {args.batch_size}, "
        f"{args.threads} thread(s), median of {args.repeats}; log-prob gap on {args.pairs} "
        "validation pairs"
    )
    for note in notes:
        print(f"# {note}")
    print("| int8 candidate | sentences/s | × float32 | mean log-prob gap vs float32 |")
    print("|---|---:|---:|---:|")
    base = statistics.median(seconds["float32"]) if "float32" in seconds else None
    for name in translators:
        secs = statistics.median(seconds[name])
        gap = mean_log_prob_error(reference, models[name], val_src, val_tgt)
        ratio = f"{base / secs:.2f}" if base else "–"
        print(f"| {name} | {len(src) / secs:.1f} | {ratio} | {gap:.4f} |", flush=True)


if __name__ == "__main__":
    main()
