"""Single-threaded CPU time of search per sentence, by batch size: the per-batch overhead.

Translates the first ``--sentences`` lines of Multi30k test_2016_flickr in length-sorted
batches of each ``--batch-sizes`` size (as ``nmt translate`` batches them), with torch on one
thread, and reports the median over ``--repeats`` runs of the CPU time of this thread
(``time.thread_time``, so that other work on the machine adds little) per sentence. Outputs
are written to ``--save`` (JSON, one list of token ids per sentence, batch size and beam) and,
with ``--compare``, checked against an earlier file: the count of sentences whose output
differs is printed.

    PYTHONPATH=. python benchmarks/search_overhead.py --model runs/demo/averaged \
        --data data/multi30k --beams 5,1 --batch-sizes 1,4,16,64
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from nmt.config import DecodeConfig
from nmt.data.parallel import corpus_path, read_lines
from nmt.decode.translate import Translator


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def batches(ids: list[list[int]], size: int) -> list[list[int]]:
    """Row indices in batches of ``size``, longest sources first."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


def time_search(
    translator: Translator, ids: list[list[int]], size: int, decode: DecodeConfig
) -> tuple[float, dict[int, list[int]]]:
    """CPU seconds of this thread to search all ``ids`` in batches of ``size``; outputs."""
    outputs: dict[int, list[int]] = {}
    start = time.thread_time()
    for rows in batches(ids, size):
        found = translator.search(translator.source_batch([ids[r] for r in rows]), decode)
        outputs.update((r, hyps[0].tokens) for r, hyps in zip(rows, found))
    return time.thread_time() - start, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--beams", default="5,1")
    parser.add_argument("--batch-sizes", default="1,4,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save", type=Path, help="write the outputs here (JSON)")
    parser.add_argument("--compare", type=Path, help="count outputs that differ from this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    translator = Translator.load(args.model, device="cpu", workers=1)
    src = read_lines(corpus_path(args.data / args.split, "de"))[: args.sentences]
    ids = translator.tokenizer.encode(src)
    print(f"# {cpu_model()}, 1 thread, float32, torch {torch.__version__}, {len(ids)} sentences")
    print("| beam | batch | ms CPU / sentence (median) | runs |")
    print("|---:|---:|---:|---|")
    saved: dict[str, list[list[int]]] = {}
    for beam in (int(b) for b in args.beams.split(",")):
        decode = DecodeConfig(beam_size=beam, batch_size=64)
        time_search(translator, ids[:8], 8, decode)  # warm-up
        for size in (int(s) for s in args.batch_sizes.split(",")):
            runs = []
            for _ in range(args.repeats):
                seconds, outputs = time_search(translator, ids, size, decode)
                runs.append(1000 * seconds / len(ids))
            saved[f"{beam}/{size}"] = [outputs[i] for i in range(len(ids))]
            shown = " ".join(f"{r:.1f}" for r in runs)
            print(f"| {beam} | {size} | {statistics.median(runs):.1f} | {shown} |", flush=True)
    if args.save:
        args.save.write_text(json.dumps(saved))
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = sum(
            a != b for key in saved if key in before for a, b in zip(saved[key], before[key])
        )
        print(f"# outputs that differ from {args.compare}: {differ}")


if __name__ == "__main__":
    main()
