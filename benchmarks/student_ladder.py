"""The speed ladder from a teacher in torch to an int8 student in CTranslate2 (issue 27's goals).

Given a teacher and a (distilled) student model folder, measures sentences/s, BLEU and chrF
(sacreBLEU through ``nmt.evaluate.score``) on Multi30k ``test_2016_flickr`` de→en for:

1. teacher, torch float32
2. teacher, CTranslate2 float32
3. student, torch float32
4. student, torch float32 with its vocabulary shortlist (``--shortlist``; left out with a note
   when the folder has no ``shortlist.safetensors``: build one with ``nmt shortlist``)
5. student, torch int8 (``--quantization int8``, :mod:`nmt.model.int8`)
6. student, CTranslate2 float32
7. student, CTranslate2 int8 (with the vocabulary map when the student has a shortlist)

CTranslate2 exports are written into a temporary folder with ``nmt export``'s function unless
given (``--teacher-ct2``, ``--student-ct2``, ``--student-ct2-int8``). Every row is loaded once
per beam size and warmed up on one batch (untimed); then ``--repeats`` rounds each translate the
whole test set once with every row in turn (alternated, so that a change of the machine's load
falls on all rows alike), and the table gives the median of the rounds. All rows run in this
process with the same threads: torch's (``--threads``), which CTranslate2 gets as as many
single-threaded workers (``inter_threads``), as ``nmt translate`` does. The first line names
the CPU (``lscpu``'s model name, family and model), the threads and the versions.

    python benchmarks/student_ladder.py --teacher runs/demo/averaged \\
        --student runs/student/averaged --data data/multi30k --beams 5,1
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.config import DecodeConfig
from nmt.data.parallel import corpus_path, read_lines
from nmt.decode.loading import load_translator
from nmt.decode.shortlist import SHORTLIST_FILE, VMAP_FILE
from nmt.evaluate.score import corpus_scores
from nmt.interop.export import export_ctranslate2


@dataclass(frozen=True)
class Row:
    """One rung of the ladder.

    Attributes:
        model: ``teacher`` or ``student``; engine: ``torch`` or ``ctranslate2``.
        dtype: the weights' type as the table shows it.
        folder: the nmt model folder or the CTranslate2 export.
        quantize: the torch engine's ``quantize`` (``int8``) or None.
        shortlist: translate with the model's vocabulary shortlist.
    """

    model: str
    engine: str
    dtype: str
    folder: Path
    quantize: str | None = None
    shortlist: bool = False


def cpu_name() -> str:
    """``lscpu``'s model name with its family and model numbers (``platform`` without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = {k.strip(): v.strip() for k, v in fields.items()}.get
    return f"{get('Model name', '?')} (family {get('CPU family', '?')}, model {get('Model', '?')})"


def decode_for(row: Row, beam: int, args: argparse.Namespace) -> DecodeConfig:
    """The search settings of ``row`` at ``beam``."""
    decode = DecodeConfig(
        beam_size=beam, length_penalty=args.length_penalty, batch_size=args.batch_size
    )
    return dataclasses.replace(decode, shortlist=True) if row.shortlist else decode


def load_row(row: Row, beam: int, args: argparse.Namespace) -> Any:
    """The translator of ``row`` (torch or CTranslate2), on CPU with every thread."""
    return load_translator(
        row.folder, decode_for(row, beam, args), row.engine, "cpu", quantize=row.quantize
    )


def ladder(args: argparse.Namespace, tmp: Path) -> tuple[list[Row], list[str]]:
    """The rows to measure, exporting to CTranslate2 into ``tmp`` what was not given, and the
    notes on the rows left out."""
    notes: list[str] = []

    def export(given: Path | None, model: Path, name: str, quantization: str) -> Path:
        return given or export_ctranslate2(model, tmp / name, quantization=quantization)

    teacher, student = args.teacher, args.student
    teacher_ct2 = export(args.teacher_ct2, teacher, "t32", "float32")
    student_ct2 = export(args.student_ct2, student, "s32", "float32")
    student_int8 = export(args.student_ct2_int8, student, "s8", "int8")
    rows = [
        Row("teacher", "torch", "float32", teacher),
        Row("teacher", "ctranslate2", "float32", teacher_ct2),
        Row("student", "torch", "float32", student),
    ]
    if (student / SHORTLIST_FILE).is_file():
        rows.append(Row("student", "torch", "float32", student, shortlist=True))
    else:
        notes.append(f"no shortlist row: {student} has no {SHORTLIST_FILE} (nmt shortlist)")
    rows += [
        Row("student", "torch", "int8", student, quantize="int8"),
        Row("student", "ctranslate2", "float32", student_ct2),
    ]
    int8 = Row("student", "ctranslate2", "int8", student_int8)
    if (student_int8 / VMAP_FILE).is_file():  # nmt export wrote the shortlist beside it
        int8 = dataclasses.replace(int8, shortlist=True)
    return [*rows, int8], notes


def measure(
    rows: list[Row], beam: int, src: list[str], args: argparse.Namespace
) -> list[tuple[list[float], list[str]]]:
    """Per row: the seconds of each round and the first round's translations."""
    translators = [load_row(row, beam, args) for row in rows]
    for t in translators:
        t.translate_chunk(src[: args.batch_size])  # warm-up (allocators, kernels, caches)
    seconds: list[list[float]] = [[] for _ in rows]
    hyps: list[list[str]] = [[] for _ in rows]
    for _ in range(args.repeats):
        for i, t in enumerate(translators):
            start = time.perf_counter()
            out = [r.text for r in t.translate_chunk(src)]
            seconds[i].append(time.perf_counter() - start)
            hyps[i] = hyps[i] or out
    return list(zip(seconds, hyps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="nmt model folder")
    parser.add_argument("--student", type=Path, required=True, help="nmt model folder")
    parser.add_argument("--teacher-ct2", type=Path, help="its float32 export (default: export)")
    parser.add_argument("--student-ct2", type=Path, help="its float32 export (default: export)")
    parser.add_argument("--student-ct2-int8", type=Path, help="its int8 export (default: export)")
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src-lang", default="de")
    parser.add_argument("--tgt-lang", default="en")
    parser.add_argument("--beams", default="5,1", help="beam sizes (1 = greedy)")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is shown")
    parser.add_argument("--threads", type=int, default=0, help="threads (0 = torch's default)")
    parser.add_argument("--lines", type=int, default=0, help="first N sentences (0 = all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    src = read_lines(corpus_path(args.data / args.split, args.src_lang))
    ref = read_lines(corpus_path(args.data / args.split, args.tgt_lang))
    if args.lines:
        src, ref = src[: args.lines], ref[: args.lines]
    import ctranslate2

    print(
        f"# {cpu_name()}, {threads} threads, torch {torch.__version__}, ctranslate2 "
        f"{ctranslate2.__version__}; {len(src)} sentences of {args.split}.{args.src_lang}, "
        f"batches of {args.batch_size}, length penalty {args.length_penalty}, median of "
        f"{args.repeats} alternated rounds"
    )
    with tempfile.TemporaryDirectory(prefix="nmt-ladder-") as tmp:
        rows, notes = ladder(args, Path(tmp))
        for note in notes:
            print(f"# {note}")
        print("| model | engine | dtype | shortlist | beam | threads | sentences/s | BLEU | chrF |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|")
        for beam in (int(b) for b in args.beams.split(",")):
            for row, (secs, hyps) in zip(rows, measure(rows, beam, src, args)):
                s = corpus_scores(hyps, [ref], metrics=("bleu", "chrf"))
                print(
                    f"| {row.model} | {row.engine} | {row.dtype} | "
                    f"{'yes' if row.shortlist else 'no'} | {beam} | {threads} | "
                    f"{len(src) / statistics.median(secs):.1f} | {s['bleu'].score:.2f} | "
                    f"{s['chrf'].score:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
