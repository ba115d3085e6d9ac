"""``nmt translate``: lines from a file or stdin to a file or stdout, one output per input."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from cli.console import err_console, handle_errors, make_progress
from cli.options import hidden, renamed
from nmt.config import DecodeConfig
from nmt.data.parallel import count_lines, iter_lines
from nmt.decode.alignment import pharaoh
from nmt.decode.ensemble import parse_weights
from nmt.decode.loading import ENGINES, load_translator
from nmt.decode.translate import Translation
from nmt.errors import ConfigError, InputError
from nmt.evaluate.score import check_reference_counts, corpus_scores, read_references
from nmt.fileio import atomic_write


def read_input(path: str) -> tuple[Iterator[str], int | None]:
    """Lines of ``path`` (``-`` = stdin; ``.gz`` files are decompressed) without newlines,
    streamed, and their count when it is cheap to know: a plain file's lines are counted
    (a scan of its bytes, in constant memory), a ``.gz`` file's are not (that would
    decompress it a second time just to size the progress bar), nor a pipe's (which can
    be read only once).

    Raises:
        InputError: missing file (a non-UTF-8 line raises while iterating, naming file and line).
    """
    if path == "-":
        return stdin_lines(), None
    lines = iter_lines(path)
    # Only a regular file can be read twice: counting a pipe (<(...), /dev/stdin, a FIFO)
    # would consume it, and the translation would then read nothing.
    counted = not path.endswith(".gz") and Path(path).is_file()
    return lines, count_lines(path) if counted else None


def stdin_lines() -> Iterator[str]:
    """Lines of stdin as they arrive, decoded as UTF-8 with line-numbered errors."""
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise InputError("not valid UTF-8; send UTF-8 text", "<stdin>", number) from None


NBEST_FORMATS = ("tsv", "moses")


def format_result(
    t: Translation, listed: bool, scores: bool, number: int = 1, nbest_format: str = "tsv"
) -> str:
    """The output lines of input line ``number`` (1-based).

    One line: the text (``--scores``: ``log-probability<TAB>text``), with an alignment
    `` ||| `` and its Pharaoh pairs after it. ``listed`` (an n-best list asked for:
    :func:`nbest_listed`), one line per hypothesis:
    ``line<TAB>rank<TAB>score<TAB>log-probability<TAB>text`` (``score`` is the length-normalised
    score that ranked it), or, in Moses' format, ``id ||| text ||| LogProb= lp ||| score`` with
    ``id`` = ``number - 1`` (Moses counts sentences from 0).
    """
    if listed:
        normalized = t.nbest_normalized or [s for _, s in t.nbest]
        rows = zip(range(len(t.nbest)), t.nbest, normalized)
        if nbest_format == "moses":
            return "\n".join(
                f"{number - 1} ||| {text} ||| LogProb= {lp:.4f} ||| {norm:.4f}"
                for _, (text, lp), norm in rows
            )
        return "\n".join(
            f"{number}\t{rank}\t{norm:.4f}\t{lp:.4f}\t{text}" for rank, (text, lp), norm in rows
        )
    text = t.text if t.alignment is None else f"{t.text} ||| {pharaoh(t.alignment)}"
    return f"{t.score:.4f}\t{text}" if scores else text


def nbest_listed(nbest: int | None, nbest_format: str | None) -> bool:
    """Whether the output is n-best lists: ``--nbest`` N > 1, or ``--nbest`` given with
    ``--nbest-format`` (``--nbest 1 --nbest-format tsv``: the 1-best in that format);
    ``nbest`` is ``None`` when ``--nbest`` is not given."""
    return nbest is not None and (nbest > 1 or nbest_format is not None)


def check_output_options(
    nbest: int | None,
    nbest_format: str | None,
    scores: bool,
    alignment: bool,
    score_target: Path | None,
    ref: list[Path] | None,
    target_prefix: Path | None,
) -> None:
    """Refuse options that the asked output would ignore (``nbest`` / ``nbest_format``:
    ``None`` when not given), before the model loads.

    Raises:
        ConfigError: ``--nbest-format`` without ``--nbest``; ``--scores`` with n-best
            lines (:func:`nbest_listed`: they carry the log-probability already); ``--nbest``,
            ``--alignment``, ``--ref`` or ``--target-prefix`` with ``--score-target``
            (which prints scores of given translations, one line each); ``--alignment`` with
            n-best lines (they have no alignment field).
    """
    if nbest_format is not None and nbest_format not in NBEST_FORMATS:
        raise ConfigError(
            f"--nbest-format {nbest_format}: choose one of {', '.join(NBEST_FORMATS)}"
        )
    if score_target is not None:
        ignored = [
            flag
            for flag, given in (
                (f"--nbest {nbest}", nbest is not None and nbest > 1),
                ("--nbest-format", nbest_format is not None),
                ("--alignment", alignment),
                ("--ref", bool(ref)),
                ("--target-prefix", target_prefix is not None),
            )
            if given
        ]
        if ignored:
            raise ConfigError(
                "--score-target prints the log-probability and normalised score of the given "
                f"translations, one line each: drop {', '.join(ignored)}"
            )
    if nbest_format is not None and nbest is None:
        raise ConfigError(
            f"--nbest-format {nbest_format} formats --nbest N lists: add --nbest N (--nbest 1: "
            "the best translation alone, in that format) or drop --nbest-format"
        )
    if scores and nbest_listed(nbest, nbest_format):
        raise ConfigError(
            f"--nbest {nbest} lines carry each hypothesis's log-probability already: drop --scores"
        )
    if alignment and nbest_listed(nbest, nbest_format):
        raise ConfigError(
            f"--nbest {nbest}{f' --nbest-format {nbest_format}' if nbest_format else ''}: "
            "n-best lines have no alignment field; drop --alignment"
        )


@handle_errors
def translate(
    model: Annotated[
        list[Path],
        typer.Option(
            "--model",
            "-m",
            help="Model folder written by nmt train (or nmt export, nmt import); repeat for an "
            "ensemble (one vocabulary).",
            show_default=False,
        ),
    ],
    input: Annotated[str, typer.Argument(help="Input file, or - for stdin.")] = "-",
    ensemble_weights: Annotated[
        str | None,
        typer.Option(
            help="Weights of the -m models' log-probabilities, e.g. 0.5,0.5 (default equal)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Output file (default stdout); written only when complete."
        ),
    ] = None,
    beam_size: Annotated[
        int | None,
        typer.Option(help=f"Beam size; 1 = greedy search [default: {DecodeConfig.beam_size}]."),
    ] = None,
    length_penalty: Annotated[
        float, typer.Option(help="GNMT length penalty alpha.")
    ] = DecodeConfig.length_penalty,
    max_len_a: Annotated[
        float, typer.Option(help="Max output length = a * src_len + b.")
    ] = DecodeConfig.max_len_a,
    max_len_b: Annotated[int, typer.Option(help="See --max-len-a.")] = DecodeConfig.max_len_b,
    batch_tokens: Annotated[
        int, typer.Option(help="Source tokens per batch.")
    ] = DecodeConfig.batch_tokens,
    batch_size: Annotated[int, typer.Option(help="Sentences per batch.")] = DecodeConfig.batch_size,
    nbest: Annotated[
        int | None,
        typer.Option(
            help="Hypotheses per input: prints line<TAB>rank<TAB>score<TAB>log-probability<TAB>"
            "text lines (score: length-normalised, what ranks them); N > 1, or any N with "
            "--nbest-format [default: 1, plain translations]."
        ),
    ] = None,
    nbest_format: Annotated[
        str | None,
        typer.Option(
            help="tsv (see --nbest) or moses: id ||| text ||| features ||| score [default: tsv]."
        ),
    ] = None,
    scores: Annotated[
        bool, typer.Option("--scores", help="Prefix each line with its log-probability and a tab.")
    ] = False,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Weights file to use instead of model.safetensors (e.g. last.safetensors)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    tgt_lang: Annotated[
        str | None,
        typer.Option(
            "--tgt-lang",
            help="Target language of a multilingual model (required when it has several).",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(ENGINES)}; auto = ctranslate2 for a folder written by nmt export."
        ),
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(help="fp32 (exact), bf16 (GPUs; on CPU no faster than fp32) or fp16 (GPU)."),
    ] = "fp32",
    quantization: Annotated[
        str | None,
        typer.Option(
            help="int8: int8 linear layers through oneDNN, activations quantized per call (CPU)."
        ),
    ] = None,
    quantize: Annotated[str | None, hidden("--quantize")] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Fail on an input longer than the model allows instead of cutting it."
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            help="CPU: batches translated at once, sharing the CPU threads; 0 = one "
            "single-threaded worker per thread (fastest for files), 1 = one batch at a time "
            "on all threads."
        ),
    ] = 0,
    ref: Annotated[
        list[Path] | None,
        typer.Option("--ref", "-r", help="Reference file(s): print BLEU and chrF when done."),
    ] = None,
    alignment: Annotated[
        bool,
        typer.Option(
            "--alignment",
            help="Append ' ||| ' and the word alignment (Pharaoh i-j pairs, source word i, "
            "target word j, 0-based) to each translation.",
        ),
    ] = False,
    alignment_layer: Annotated[
        int | None,
        typer.Option(help="Decoder layer (0-based) whose attention aligns; default penultimate."),
    ] = None,
    sampling_topk: Annotated[
        int | None,
        typer.Option(
            help="Sample instead of searching: 0 = from all tokens, K > 1 = from the K most "
            "probable (implies --beam-size 1); 1 = search (default)."
        ),
    ] = None,
    sampling_topp: Annotated[
        float | None,
        typer.Option(help="Sample from the smallest set of tokens whose probability reaches P."),
    ] = None,
    sampling_temperature: Annotated[
        float | None, typer.Option(help="Divide the logits by T before sampling.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Sampling seed (each line draws from its own stream, seeded from it and the "
            "line number); default: a fresh one."
        ),
    ] = None,
    score_target: Annotated[
        Path | None,
        typer.Option(
            help="Score the given translations (one per input line) instead of translating: "
            "prints log-probability<TAB>length-normalised score per line."
        ),
    ] = None,
    shortlist: Annotated[
        bool,
        typer.Option(
            "--shortlist",
            help="Search each batch over the target pieces its sources make likely (the "
            "folder's shortlist from nmt shortlist; CTranslate2: its vmap.txt): faster.",
        ),
    ] = False,
    target_prefix: Annotated[
        Path | None,
        typer.Option(
            help="File with one target prefix per input line (empty line = none): each "
            "translation starts with it and the search continues from there."
        ),
    ] = None,
) -> None:
    """Translate a file or stdin with batched beam search (or sample, with --sampling-topk)."""
    check_output_options(nbest, nbest_format, scores, alignment, score_target, ref, target_prefix)
    if sampling_topk not in (None, 1) and beam_size is None:
        beam_size = 1  # a sample is one output: no beam unless asked for (then an error)
    default = DecodeConfig()
    decode = DecodeConfig(
        beam_size=default.beam_size if beam_size is None else beam_size,
        length_penalty=length_penalty,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        nbest=1 if nbest is None else nbest,
        batch_tokens=batch_tokens,
        batch_size=batch_size,
        alignment=alignment,
        alignment_layer=alignment_layer,
        sampling_topk=default.sampling_topk if sampling_topk is None else sampling_topk,
        sampling_topp=default.sampling_topp if sampling_topp is None else sampling_topp,
        sampling_temperature=(
            default.sampling_temperature if sampling_temperature is None else sampling_temperature
        ),
        seed=seed,
        shortlist=shortlist,
    )
    lines, total = read_input(input)
    source = "the input" if input == "-" else input
    refs = read_references(ref or [], total, source)  # before the work; [] without --ref
    prefixes = None if target_prefix is None else iter_lines(target_prefix)
    # Lines are translated as they arrive; stdout is flushed per line when reading stdin so
    # that a line typed (or sent by another program) comes back at once.
    streaming = input == "-"
    models = model
    quantization = renamed(quantization, quantize, "--quantization", "--quantize")
    translator = load_translator(
        models[0] if len(models) == 1 and ensemble_weights is None else models,
        decode,
        engine,
        device,
        weights,
        strict=strict,
        dtype=dtype,
        quantize=quantization,
        workers=workers,
        ensemble_weights=None
        if ensemble_weights is None
        else parse_weights(ensemble_weights, len(models)),
        tgt_lang=tgt_lang,
    )
    rendered: Iterator[tuple[str, Translation | None]]
    listed = nbest_listed(nbest, nbest_format)
    if score_target is not None:
        targets = iter_lines(score_target)
        scored = translator.score_targets(lines, targets, None, str(score_target))
        rendered = ((f"{s:.4f}\t{n:.4f}", None) for s, n in scored)
    else:
        results = (
            translator.translate(lines)
            if prefixes is None
            else translator.translate(lines, None, prefixes, str(target_prefix))
        )
        rendered = (
            (format_result(t, listed, scores, number, nbest_format or "tsv"), t)
            for number, t in enumerate(results, start=1)
        )
    hyps: list[str] = []
    truncated: list[int] = []  # the first 20 cut lines' numbers (shown), and how many
    n_truncated = 0

    def emit(write: Callable[[str], object]) -> None:
        nonlocal n_truncated
        with make_progress() as progress:
            task = progress.add_task("translate", total=total)
            for number, (text, t) in enumerate(rendered, start=1):
                write(text + "\n")
                if t is not None:
                    if ref:  # kept only to score them: without --ref, memory stays bounded
                        hyps.append(t.text)
                    if t.truncated:
                        n_truncated += 1
                        if len(truncated) < 20:  # bounded: the warning shows 20
                            truncated.append(number)
                progress.advance(task)

    try:
        if output is None:
            emit(lambda text: (sys.stdout.write(text), streaming and sys.stdout.flush()))
        else:
            atomic_write(output, lambda f: emit(lambda text: f.write(text.encode("utf-8"))))
    except InputError as exc:  # e.g. --strict's "input line 2 has ...": name the file too
        if exc.path is not None or input == "-":
            raise
        raise InputError(str(exc), input) from None
    if truncated:
        shown = ", ".join(map(str, truncated)) + (" ..." if n_truncated > len(truncated) else "")
        err_console.print(
            f"[yellow]warning:[/] {n_truncated} input line(s) longer than the "
            f"model's limit were cut: line {shown}"
        )
    if ref:
        if total is None:  # stdin, a pipe, a .gz file: counted only now
            check_reference_counts(ref, refs, len(hyps), source)
        for name, result in corpus_scores(hyps, refs, metrics=("bleu", "chrf")).items():
            err_console.print(
                f"{result.detail}\n  {name} signature: {result.signature}",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
