"""Translation speed of candidate student shapes (issue 27): which depth split of a
``d_model`` 256 Transformer translates fastest on CPU, before any training.

Each shape is a randomly initialised model (seeded), run by the torch engine in float32
(the default path of ``nmt translate``: linear layers through oneDNN, one single-threaded
worker per CPU thread) on the first ``--lines`` sentences of Multi30k test_2016_flickr,
greedy and beam 5. A random model almost never emits EOS, so every hypothesis runs to the
length cap: the cap is set to ``src_len + 2`` tokens (``max_len_a 1``, ``max_len_b 2``),
about the length of a real de→en translation in pieces, and the same for every shape, so the
shapes do the same number of decoder steps and differ only in their cost per step. Speed
only: the quality of each shape needs training (``nmt distill``), which this does not do.

    python benchmarks/student_shapes.py --data /work/shared/data/multi30k --lines 300
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from nmt.config import DecodeConfig, ModelConfig
from nmt.data.parallel import corpus_path, read_lines
from nmt.data.textio import iter_lines
from nmt.data.vocab import load_tokenizer, train_vocab
from nmt.decode.translate import Translator, for_inference
from nmt.model.transformer import Transformer

# name: (encoder layers, decoder layers); d_model 256, 4 heads, FFN 1024 (the small preset).
SHAPES = {"3-3 (small)": (3, 3), "6-1": (6, 1), "6-2": (6, 2), "4-1": (4, 1)}


def tokenizer_folder(data: Path, folder: Path, vocab_size: int, lines: int) -> Path:
    """An 8k joint SentencePiece model trained on the first ``lines`` Multi30k training pairs."""
    src = (
        line for i, line in enumerate(iter_lines(corpus_path(data / "train", "de"))) if i < lines
    )
    tgt = (
        line for i, line in enumerate(iter_lines(corpus_path(data / "train", "en"))) if i < lines
    )
    train_vocab(src, tgt, folder, vocab_size)
    return folder


def translator_for(layers: tuple[int, int], vocab: Path, beam: int) -> Translator:
    """A seeded random model of ``layers`` (encoder, decoder), ready to translate with ``beam``."""
    tokenizer = load_tokenizer(vocab)
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        n_encoder_layers=layers[0],
        n_decoder_layers=layers[1],
        dropout=0.0,
    )
    decode = DecodeConfig(beam_size=beam, max_len_a=1.0, max_len_b=2)
    return Translator(for_inference(Transformer(cfg)), tokenizer, decode, workers=0)


def seconds(translator: Translator, src: list[str]) -> float:
    """Wall-clock seconds to translate ``src``."""
    start = time.perf_counter()
    translator.translate_chunk(src)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--lines", type=int, default=300, help="test sentences translated")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--spm-lines", type=int, default=29000, help="pairs the vocabulary sees")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best kept)")
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help="names of SHAPES, comma-separated"
    )
    args = parser.parse_args()
    src = read_lines(corpus_path(args.data / "test_2016_flickr", "de"))[: args.lines]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32, {len(src)} sentences")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        vocab = tokenizer_folder(args.data, Path(tmp), args.vocab_size, args.spm_lines)
        names = args.shapes.split(",")
        runs = {(name, beam): translator_for(SHAPES[name], vocab, beam)
                for name in names for beam in (1, 5)}  # fmt: skip
        for translator in runs.values():
            translator.translate_chunk(src[:32])  # warm-up (allocator, kernels, threads)
        # Round robin, best of --repeats per row: a load that comes and goes on a shared
        # machine slows every shape alike instead of whichever ran at that moment.
        best = dict.fromkeys(runs, float("inf"))
        for repeat in range(args.repeats):
            for key, translator in runs.items():
                best[key] = min(best[key], seconds(translator, src))
            done = ", ".join(f"{n} b{b} {len(src) / t:.1f}" for (n, b), t in best.items())
            print(f"round {repeat + 1}: {done}", flush=True)
    rows = [(name, {beam: len(src) / best[name, beam] for beam in (1, 5)}) for name in names]
    base = rows[0][1]
    print("\n| shape (enc-dec) | greedy sent/s | × 3-3 | beam 5 sent/s | × 3-3 |")
    print("|---|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s[1]:.1f} | {s[1] / base[1]:.2f} | {s[5]:.1f} | {s[5] / base[5]:.2f} |")


if __name__ == "__main__":
    main()
