"""sacreBLEU metrics (BLEU, chrF/chrF++, TER) and their signatures.

Every number comes from sacreBLEU's Python API (Post 2018), built with the same arguments the
``sacrebleu`` command builds, so a score here equals ``sacrebleu HYP -r REF -m bleu chrf ter``
and each one carries sacreBLEU's signature (the settings needed to reproduce it). Scores are on
a 0-100 scale; TER is an edit rate in percent (lower is better, can exceed 100).

Methods: BLEU (Papineni et al. 2002), chrF (Popović 2015) and chrF++ (Popović 2017), TER
(Snover et al. 2006). Paired significance tests between systems are in
:mod:`nmt.evaluate.significance`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

from nmt.data.textio import read_lines
from nmt.data.tokenizer import WORD_START
from nmt.errors import ConfigError, InputError

METRICS = ("bleu", "chrf", "ter")
DEFAULT_METRICS = ("bleu", "chrf")
TOKENIZERS: tuple[str, ...] = tuple(BLEU.TOKENIZERS)

# Space before a comma or full stop, split clitics and Moses escapes: signs of tokenized text.
_TOKENIZED = re.compile(r" [,.](?= |$)| 's\b| n't\b|&(?:apos|quot|amp|lt|gt);")
TOKENIZED_SHARE = 0.1


@dataclass(frozen=True)
class ScoreOptions:
    """Metric settings; the defaults are sacreBLEU's (and appear in every signature).

    Args:
        tokenize: BLEU tokenizer, one of :data:`TOKENIZERS` (13a is mteval-v13a's).
        lowercase: case-insensitive BLEU.
        chrf_char_order: chrF character n-gram order.
        chrf_word_order: chrF word n-gram order; 2 gives chrF++ (Popović 2017).
        chrf_beta: weight of recall against precision in chrF's F-score.
        chrf_lowercase: case-insensitive chrF.
        ter_case_sensitive: case-sensitive TER (Tercom lowercases by default).
        ter_no_punct: remove punctuation before TER.
        ter_asian_support: split Asian characters for TER.
        ter_normalized: Tercom's normalization and tokenization before TER.

    Raises:
        ConfigError: an unknown tokenizer or a negative n-gram order or beta.
    """

    tokenize: str = BLEU.TOKENIZER_DEFAULT
    lowercase: bool = False
    chrf_char_order: int = CHRF.CHAR_ORDER
    chrf_word_order: int = CHRF.WORD_ORDER
    chrf_beta: int = CHRF.BETA
    chrf_lowercase: bool = False
    ter_case_sensitive: bool = False
    ter_no_punct: bool = False
    ter_asian_support: bool = False
    ter_normalized: bool = False

    def __post_init__(self) -> None:
        if self.tokenize not in TOKENIZERS:
            raise ConfigError(
                f"tokenize={self.tokenize!r} is not a sacreBLEU tokenizer; choose one of: "
                + ", ".join(TOKENIZERS)
            )
        for name in ("chrf_char_order", "chrf_word_order", "chrf_beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.chrf_char_order + self.chrf_word_order == 0:
            raise ConfigError("chrf_char_order and chrf_word_order are both 0; raise one of them")


@dataclass(frozen=True)
class MetricResult:
    """One corpus-level score.

    Attributes:
        name: sacreBLEU's name of the metric: ``BLEU``, ``chrF2``, ``chrF2++``, ``TER``.
        score: the score, 0-100 (TER: percent of edits, lower is better).
        signature: sacreBLEU's reproducibility signature, e.g. ``nrefs:1|case:mixed|...``.
        detail: sacreBLEU's ``str(score)``, e.g. ``BLEU = 34.21 65.1/40.2/... (BP = ...)``.
    """

    name: str
    score: float
    signature: str
    detail: str


@dataclass(frozen=True)
class SentenceScores:
    """Per-line scores of one metric (sentence BLEU uses effective n-gram order, as sacreBLEU).

    Attributes:
        name: sacreBLEU's name of the metric.
        signature: sacreBLEU's signature of the sentence-level metric.
        scores: one score per hypothesis line, 0-100.
    """

    name: str
    signature: str
    scores: tuple[float, ...]


def read_text(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (gzipped if it ends in ``.gz``).

    Only the line end is removed (``\\n``, or ``\\r\\n``); other whitespace is kept. A file
    whose last line has no newline gives the same lines as one whose last line has.

    Raises:
        InputError: the file is missing or unreadable, or is not valid UTF-8 (with the line).
    """
    return read_lines(path)  # the same reader as training and translation


def read_inputs(
    hyp_paths: Sequence[str | Path], ref_paths: Sequence[str | Path]
) -> tuple[list[list[str]], list[list[str]]]:
    """Read hypothesis and reference files and check that they are line-aligned.

    Returns:
        ``(systems, refs)``: one list of lines per hypothesis file and per reference file.

    Raises:
        InputError: a file is unreadable or not UTF-8, a hypothesis file is empty, or two
            files have different line counts (the message names both files and counts).
    """
    if not hyp_paths or not ref_paths:
        raise InputError("need at least one hypothesis file and one reference file")
    refs = [read_text(path) for path in ref_paths]
    for path, lines in zip(ref_paths[1:], refs[1:], strict=True):
        _check_count(path, len(lines), ref_paths[0], len(refs[0]))
    systems = []
    for path in hyp_paths:
        lines = read_text(path)
        if not lines:
            raise InputError("is empty: there are no hypotheses to score", path)
        _check_count(path, len(lines), ref_paths[0], len(refs[0]))
        systems.append(lines)
    return systems, refs


def read_references(
    ref_paths: Sequence[str | Path], n_lines: int | None, source: str
) -> list[list[str]]:
    """Read reference files for ``source`` (``nmt translate --ref``) before translating it,
    so that a missing, non-UTF-8 or short reference is reported before the work rather than
    after it; their line counts are checked against ``n_lines`` when it is known (else
    afterwards, with :func:`check_reference_counts` and the count of hypotheses).

    Raises:
        InputError: a reference file is unreadable, or see :func:`check_reference_counts`.
    """
    refs = [read_text(path) for path in ref_paths]
    if n_lines is not None:
        check_reference_counts(ref_paths, refs, n_lines, source)
    return refs


def check_reference_counts(
    ref_paths: Sequence[str | Path], refs: Sequence[Sequence[str]], n_lines: int, source: str
) -> None:
    """Raise :class:`InputError` for a reference whose line count is not ``n_lines``, naming
    the file, ``source`` and both counts."""
    for path, lines in zip(ref_paths, refs):
        if len(lines) != n_lines:
            raise InputError(
                f"has {len(lines)} lines but {source} has {n_lines}; references must have "
                "one line per input line",
                path,
            )


def _check_count(path: str | Path, count: int, ref_path: str | Path, expected: int) -> None:
    if count != expected:
        raise InputError(
            f"has {count} lines but the reference {ref_path} has {expected} lines; every "
            "hypothesis line must pair with one line of each reference",
            path,
        )


def check_hypotheses(
    hyps: Sequence[str], name: str = "hypotheses", baseline: Sequence[str] | None = None
) -> list[str]:
    """Common mistakes in a hypothesis file, as one warning each (empty list: none found).

    Looks for SentencePiece markers (``▁``) left by a missing decode, text that looks
    tokenized (`` ,`` `` .`` `` 's`` ``&quot;`` in at least 10% of the lines; sacreBLEU
    tokenizes itself, so tokenized input gives scores not comparable to published ones), empty
    lines, and a system identical to ``baseline`` (its paired p-value is meaningless).

    Args:
        hyps: hypothesis lines.
        name: how to call them in the warnings (usually the file path).
        baseline: the baseline's lines when ``hyps`` is compared with it.
    """
    total = len(hyps)
    if total == 0:
        return [f"{name}: no lines"]
    warnings = []
    n_spm = sum(WORD_START in line for line in hyps)
    if n_spm:
        warnings.append(
            f"{name}: {n_spm} of {total} lines contain the SentencePiece marker "
            f"'{WORD_START}' (U+2581); decode the pieces to plain text before scoring"
        )
    n_tok = sum(bool(_TOKENIZED.search(line)) for line in hyps)
    if n_tok and n_tok >= TOKENIZED_SHARE * total:
        warnings.append(
            f"{name}: {n_tok} of {total} lines look tokenized (' ,', ' .', \" 's\", &quot;); "
            "detokenize them: sacreBLEU tokenizes itself and tokenized input is not comparable"
        )
    n_empty = sum(not line.strip() for line in hyps)
    if n_empty:
        warnings.append(f"{name}: {n_empty} of {total} lines are empty")
    if baseline is not None and list(hyps) == list(baseline):
        warnings.append(
            f"{name} is identical to the baseline; its paired p-value is meaningless "
            "(sacreBLEU reports the smallest possible one)"
        )
    return warnings


def corpus_scores(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    options: ScoreOptions | None = None,
) -> dict[str, MetricResult]:
    """Corpus-level scores, equal to ``sacrebleu.metrics.X(...).corpus_score(hyps, refs)``.

    Args:
        hyps: one detokenized hypothesis per segment.
        refs: reference streams, each a list of lines aligned with ``hyps``.
        metrics: metric ids among :data:`METRICS`.
        options: metric settings (default: sacreBLEU's).

    Returns:
        Metric id (``bleu``, ``chrf``, ``ter``) to its :class:`MetricResult`, in the order of
        ``metrics``.

    Raises:
        ConfigError: an unknown metric, or a tokenizer whose optional package is missing.
        InputError: no hypotheses, or a reference stream of another length.
    """
    options = options or ScoreOptions()
    _check_lengths(hyps, refs)
    results = {}
    for name in _check_metrics(metrics):
        metric = _make_metric(name, options)
        score = metric.corpus_score(list(hyps), [list(r) for r in refs])
        signature = metric.get_signature().format()
        results[name] = MetricResult(score.name, float(score.score), signature, str(score))
    return results


def sentence_scores(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    options: ScoreOptions | None = None,
) -> dict[str, SentenceScores]:
    """Per-line scores, equal to sacreBLEU's ``sentence_score`` (``sacrebleu -sl``).

    Sentence BLEU uses effective n-gram order (``eff:yes``), as ``sacrebleu -sl`` does.

    Args and Raises: as :func:`corpus_scores`.

    Returns:
        Metric id to its :class:`SentenceScores` (one score per line of ``hyps``).
    """
    options = options or ScoreOptions()
    _check_lengths(hyps, refs)
    results = {}
    for name in _check_metrics(metrics):
        metric = _make_metric(name, options, sentence=True)
        scores = [metric.sentence_score(hyp, list(r)) for hyp, *r in zip(hyps, *refs, strict=True)]
        results[name] = SentenceScores(
            scores[0].name,
            metric.get_signature().format(),
            tuple(float(s.score) for s in scores),
        )
    return results


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip().lower() for m in metrics))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ConfigError(
            f"unknown metric(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from: {', '.join(METRICS)}"
        )
    return names


def _check_lengths(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if len(hyps) == 0:
        raise InputError("there are no hypotheses to score")
    if len(refs) == 0:
        raise InputError("need at least one reference stream")
    for i, ref in enumerate(refs, start=1):
        if len(ref) != len(hyps):
            raise InputError(
                f"reference stream {i} has {len(ref)} lines but there are {len(hyps)} hypotheses"
            )


def _make_metric(
    name: str,
    options: ScoreOptions,
    references: list[list[str]] | None = None,
    sentence: bool = False,
) -> Metric:
    if name == "bleu":
        return _make_bleu(options, references, sentence)
    if name == "chrf":
        return CHRF(
            char_order=options.chrf_char_order,
            word_order=options.chrf_word_order,
            beta=options.chrf_beta,
            lowercase=options.chrf_lowercase,
            references=references,
        )
    return TER(
        normalized=options.ter_normalized,
        no_punct=options.ter_no_punct,
        asian_support=options.ter_asian_support,
        case_sensitive=options.ter_case_sensitive,
        references=references,
    )


def _make_bleu(options: ScoreOptions, references: list[list[str]] | None, sentence: bool) -> BLEU:
    # force=True: check_hypotheses warns about tokenized input; the library stays quiet.
    try:
        return BLEU(
            lowercase=options.lowercase,
            tokenize=options.tokenize,
            force=True,
            effective_order=sentence,
            references=references,
        )
    except (ImportError, RuntimeError) as exc:  # MeCab tokenizers without their packages
        raise ConfigError(
            f"tokenize={options.tokenize!r} needs an optional package: {' '.join(str(exc).split())}"
        ) from None
    except OSError as exc:  # SentencePiece tokenizers download their model on first use
        raise ConfigError(
            f"tokenize={options.tokenize!r} could not load its SentencePiece model (sacreBLEU "
            f"downloads it to ~/.sacrebleu/models on first use): {exc}"
        ) from None
