"""``nmt score``: BLEU, chrF and TER with sacreBLEU signatures, and paired significance tests.

Results (lines, a table, or JSON) go to stdout; warnings go to stderr.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.console import err_console, fail, handle_errors
from cli.options import hidden, renamed
from nmt.evaluate.score import (
    DEFAULT_METRICS,
    TOKENIZERS,
    MetricResult,
    ScoreOptions,
    SentenceScores,
    check_hypotheses,
    corpus_scores,
    read_inputs,
    sentence_scores,
)
from nmt.evaluate.significance import (
    DEFAULT_PAIRED_SAMPLES,
    DEFAULT_SEED,
    SIGNIFICANCE_LEVEL,
    PairedResult,
    paired_test,
)

_DEFAULTS = ScoreOptions()
_SAMPLES = DEFAULT_PAIRED_SAMPLES
_METHOD_NAMES = {"bs": "paired bootstrap resampling", "ar": "approximate randomization"}


@handle_errors
def score(
    hypotheses: Annotated[
        list[Path],
        typer.Argument(
            help="Detokenized hypothesis file(s), one sentence per line (.gz read too). With "
            "several files the first is the baseline the others are compared with.",
            show_default=False,
        ),
    ],
    refs: Annotated[
        list[Path],
        typer.Option(
            "--ref", "-r", help="Reference file, line-aligned; repeat for several references."
        ),
    ],
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            help=f"Comma-separated: bleu,chrf,ter. Default: {','.join(DEFAULT_METRICS)}.",
        ),
    ] = None,
    # sacreBLEU's -m; in nmt, -m is --model in every command that reads one.
    metrics_m: Annotated[str | None, hidden("-m")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON on stdout (JSON lines with --sentence).")
    ] = False,
    sentence: Annotated[
        bool, typer.Option("--sentence", help="Print one score per hypothesis line.")
    ] = False,
    paired: Annotated[
        Literal["bs", "ar", "none"] | None,
        typer.Option(
            help="Test of several systems: bs (paired bootstrap), ar (approximate "
            "randomization), none. Default: bs."
        ),
    ] = None,
    paired_n: Annotated[
        int | None,
        typer.Option(
            help="Bootstrap resamples / AR trials. Default: "
            f"{_SAMPLES['bs']} for bs, {_SAMPLES['ar']} for ar."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=f"Seed of the paired test. Default: {DEFAULT_SEED}.")
    ] = None,
    tokenize: Annotated[
        str | None,
        typer.Option(
            help=f"BLEU tokenizer: {', '.join(TOKENIZERS)}. Default: {_DEFAULTS.tokenize}."
        ),
    ] = None,
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Case-insensitive BLEU.")] = False,
    chrf_word_order: Annotated[
        int | None,
        typer.Option(
            help=f"chrF word n-gram order; 2 is chrF++. Default: {_DEFAULTS.chrf_word_order}."
        ),
    ] = None,
    chrf_char_order: Annotated[
        int | None,
        typer.Option(help=f"chrF character n-gram order. Default: {_DEFAULTS.chrf_char_order}."),
    ] = None,
    chrf_beta: Annotated[
        int | None, typer.Option(help=f"chrF recall weight. Default: {_DEFAULTS.chrf_beta}.")
    ] = None,
    chrf_lowercase: Annotated[
        bool, typer.Option("--chrf-lowercase", help="Case-insensitive chrF.")
    ] = False,
    ter_case_sensitive: Annotated[
        bool, typer.Option("--ter-case-sensitive", help="Case-sensitive TER.")
    ] = False,
    ter_no_punct: Annotated[
        bool, typer.Option("--ter-no-punct", help="Remove punctuation for TER.")
    ] = False,
    ter_asian_support: Annotated[
        bool, typer.Option("--ter-asian-support", help="Split Asian characters for TER.")
    ] = False,
    ter_normalized: Annotated[
        bool, typer.Option("--ter-normalized", help="Tercom normalization for TER.")
    ] = False,
) -> None:
    """Score hypotheses against references with sacreBLEU (BLEU, chrF, TER).

    Several hypothesis files are compared with the first by a paired significance test.
    """
    options = _options(
        tokenize=tokenize,
        lowercase=lowercase,
        chrf_word_order=chrf_word_order,
        chrf_char_order=chrf_char_order,
        chrf_beta=chrf_beta,
        chrf_lowercase=chrf_lowercase,
        ter_case_sensitive=ter_case_sensitive,
        ter_no_punct=ter_no_punct,
        ter_asian_support=ter_asian_support,
        ter_normalized=ter_normalized,
    )
    metrics = renamed(metrics, metrics_m, "--metrics", "-m (in nmt score)")
    names = DEFAULT_METRICS if metrics is None else tuple(metrics.split(","))
    if sentence and len(hypotheses) > 1:
        fail(f"--sentence scores one hypothesis file; got {len(hypotheses)}")
    systems, references = read_inputs(hypotheses, refs)
    for i, (path, hyps) in enumerate(zip(hypotheses, systems, strict=True)):
        for warning in check_hypotheses(hyps, str(path), systems[0] if i else None):
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)

    if sentence:
        _print_sentences(sentence_scores(systems[0], references, names, options), json_output)
        return
    per_system = [corpus_scores(hyps, references, names, options) for hyps in systems]
    result = None
    if len(systems) > 1 and paired != "none":
        result = paired_test(
            systems,
            references,
            names,
            options,
            method=paired or "bs",
            n_samples=paired_n,
            seed=DEFAULT_SEED if seed is None else seed,
            names=[str(path) for path in hypotheses],
        )
    if json_output:
        typer.echo(
            json.dumps(_to_json(hypotheses, per_system, result), indent=2, ensure_ascii=False)
        )
    elif result is not None:
        _print_paired(result)
    else:
        _print_corpus(hypotheses, per_system)


def _options(**given: Any) -> ScoreOptions:
    # None / False mean "not given": ScoreOptions holds the defaults.
    return ScoreOptions(**{k: v for k, v in given.items() if v is not None and v is not False})


def _print_corpus(paths: list[Path], per_system: list[dict[str, MetricResult]]) -> None:
    for path, results in zip(paths, per_system, strict=True):
        if len(paths) > 1:
            typer.echo(f"# {path}")
        for r in results.values():
            typer.echo(r.detail)
            typer.echo(f"  {r.name} signature: {r.signature}")


def _print_sentences(results: dict[str, SentenceScores], json_output: bool) -> None:
    for r in results.values():
        err_console.print(f"{r.name} signature: {r.signature}", highlight=False, soft_wrap=True)
    columns = list(zip(*(r.scores for r in results.values()), strict=True))
    for number, row in enumerate(columns, start=1):
        if json_output:
            typer.echo(json.dumps({"line": number, **dict(zip(results, row, strict=True))}))
        else:
            typer.echo("\t".join(f"{x:.2f}" for x in row))


def _print_paired(result: PairedResult) -> None:
    table = Table("System", "Metric", "Score", "Mean ± 95% CI", "p-value", title="nmt score")
    for i, name in enumerate(result.names):
        for metric, scores in result.scores.items():
            s = scores[i]
            ci = "" if s.mean is None else f"{s.mean:.2f} ± {s.ci:.2f}"
            if s.p_value is None:
                p = Text("baseline", style="dim")
            else:
                star = s.significant()
                p = Text(f"{s.p_value:.4f}" + (" *" if star else ""), style="bold" if star else "")
            table.add_row(Text(name), result.metric_names[metric], f"{s.score:.2f}", ci, p)
        if i < len(result.names) - 1:
            table.add_section()
    out = Console(highlight=False)
    out.print(table)
    out.print(
        f"* p < {SIGNIFICANCE_LEVEL}: differs significantly from the baseline "
        f"({_METHOD_NAMES[result.method]}, n={result.n_samples}, seed={result.seed})",
        soft_wrap=True,
    )
    for metric, signature in result.signatures.items():
        out.print(f"{result.metric_names[metric]} signature: {signature}", soft_wrap=True)


def _to_json(
    paths: list[Path], per_system: list[dict[str, MetricResult]], result: PairedResult | None
) -> dict | list:
    systems = [{k: asdict(v) for k, v in scores.items()} for scores in per_system]
    if len(paths) == 1:
        return systems[0]
    out: dict[str, Any] = {
        "systems": [
            {"path": str(p), "baseline": i == 0, **s}
            for i, (p, s) in enumerate(zip(paths, systems, strict=True))
        ],
        "paired": None,
    }
    if result is not None:
        out["paired"] = {
            "method": result.method,
            "n_samples": result.n_samples,
            "seed": result.seed,
            "alpha": SIGNIFICANCE_LEVEL,
            "signatures": result.signatures,
            "results": {
                metric: [
                    {"path": str(p), **asdict(s), "significant": s.significant()}
                    for p, s in zip(paths, scores, strict=True)
                ]
                for metric, scores in result.scores.items()
            },
        }
    return out
