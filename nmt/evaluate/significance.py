"""Paired significance tests: does a system's score differ from the baseline's by more than chance?

Each system is compared with the first (the baseline) on the same segments by sacreBLEU's
``sacrebleu.significance.PairedTest`` (Post 2018), built as the ``sacrebleu`` command builds it,
so results equal ``sacrebleu --paired-bs`` or ``--paired-ar`` with the same number of trials and
the same ``SACREBLEU_SEED``. Metrics and their settings come from :mod:`nmt.evaluate.score`.

Methods: paired bootstrap resampling (Koehn 2004; sacreBLEU replicates Moses'
``bootstrap-hypothesis-difference-significance.pl``) and two-sided approximate randomization
(Riezler & Maxwell 2005), whose 95% confidence intervals come from bootstrap resamples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

from sacrebleu.significance import PairedTest, Result

from nmt.errors import ConfigError, InputError
from nmt.evaluate.score import (
    DEFAULT_METRICS,
    ScoreOptions,
    _check_lengths,
    _check_metrics,
    _make_metric,
)

PAIRED_METHODS = ("bs", "ar")
# sacreBLEU's defaults: 1000 bootstrap resamples, 10000 AR trials, seed 12345 (SACREBLEU_SEED).
DEFAULT_PAIRED_SAMPLES: dict[str, int] = dict(PairedTest._DEFAULT_SAMPLES)
DEFAULT_SEED = 12345
# Bootstrap resamples behind the confidence intervals of an AR test (sacreBLEU's API default).
AR_CI_RESAMPLES = DEFAULT_PAIRED_SAMPLES["bs"]
SIGNIFICANCE_LEVEL = 0.05


@dataclass(frozen=True)
class PairedScore:
    """One system's result for one metric in a paired test.

    Attributes:
        score: the corpus score, 0-100.
        mean: mean score over the bootstrap resamples.
        ci: half-width of the 95% confidence interval around ``mean`` (score units).
        p_value: probability of a difference at least as large by chance; ``None`` for the
            baseline.
    """

    score: float
    mean: float | None
    ci: float | None
    p_value: float | None

    def significant(self, alpha: float = SIGNIFICANCE_LEVEL) -> bool:
        """Whether the difference to the baseline is significant at level ``alpha``."""
        return self.p_value is not None and self.p_value < alpha


@dataclass(frozen=True)
class PairedResult:
    """A paired test of several systems against the first (the baseline).

    Attributes:
        method: ``bs`` (paired bootstrap resampling) or ``ar`` (approximate randomization).
        n_samples: bootstrap resamples (bs) or randomization trials (ar).
        seed: the RNG seed (``None``: unseeded).
        names: system names, baseline first.
        metric_names: metric id (``bleu``) to sacreBLEU's name (``BLEU``).
        signatures: metric id to sacreBLEU's signature, which records the test and seed.
        scores: metric id to one :class:`PairedScore` per system, baseline first.
    """

    method: str
    n_samples: int
    seed: int | None
    names: tuple[str, ...]
    metric_names: dict[str, str]
    signatures: dict[str, str]
    scores: dict[str, tuple[PairedScore, ...]]


def paired_test(
    systems: Sequence[Sequence[str]],
    refs: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    options: ScoreOptions | None = None,
    method: str = "bs",
    n_samples: int | None = None,
    seed: int | None = DEFAULT_SEED,
    names: Sequence[str] | None = None,
) -> PairedResult:
    """Compare each system with the first (the baseline) by a paired significance test.

    Runs ``sacrebleu.significance.PairedTest``, so numbers equal ``sacrebleu --paired-bs``
    (paired bootstrap resampling, Koehn 2004) or ``--paired-ar`` (approximate randomization,
    Riezler & Maxwell 2005) with the same trials and ``SACREBLEU_SEED``. AR tests add 95%
    confidence intervals from :data:`AR_CI_RESAMPLES` bootstrap resamples (its p-values are
    unchanged by that; its signature then also shows ``bs``).

    Args:
        systems: hypothesis lines per system, baseline first.
        refs: reference streams aligned with every system.
        metrics: metric ids among :data:`~nmt.evaluate.score.METRICS`.
        options: metric settings.
        method: ``bs`` or ``ar``.
        n_samples: resamples (bs) or trials (ar); ``None``: :data:`DEFAULT_PAIRED_SAMPLES`.
        seed: RNG seed, used instead of ``$SACREBLEU_SEED``; ``None`` draws entropy from the OS
            (not reproducible).
        names: system names (default ``system 1``, ``system 2``, ...).

    Raises:
        ConfigError: an unknown method or metric, ``n_samples < 1``, or ``seed=0`` (sacreBLEU
            treats 0 as "no seed").
        InputError: fewer than two systems, or misaligned lines.
    """
    options = options or ScoreOptions()
    n_samples = _check_paired_args(systems, method, n_samples, seed)
    names = (
        tuple(names) if names is not None else tuple(f"system {i + 1}" for i in range(len(systems)))
    )
    if len(names) != len(systems):
        raise ConfigError(f"got {len(names)} names for {len(systems)} systems")
    for hyps in systems:
        _check_lengths(hyps, refs)
    ref_lists = [list(r) for r in refs]
    # Built with the references, as the sacrebleu command does, so they are processed once.
    metric_objs = {m: _make_metric(m, options, ref_lists) for m in _check_metrics(metrics)}
    with _sacrebleu_seed(seed):
        test = PairedTest(
            [(name, list(hyps)) for name, hyps in zip(names, systems, strict=True)],
            metric_objs,
            references=None,
            test_type=method,
            n_samples=n_samples,
            n_ar_confidence=AR_CI_RESAMPLES if method == "ar" else -1,
        )
        signatures, table = test()
    # PairedTest keys its results by score name (BLEU, chrF2, ...), in the order of metric_objs;
    # apart from its "System" column of names (not read here), every column holds Results.
    results = cast(dict[str, list[Result]], table)
    sacre_names = dict(zip(metric_objs, signatures, strict=True))
    return PairedResult(
        method=method,
        n_samples=n_samples,
        seed=seed,
        names=names,
        metric_names=sacre_names,
        signatures={m: signatures[s].format() for m, s in sacre_names.items()},
        scores={m: tuple(_paired_score(r) for r in results[s]) for m, s in sacre_names.items()},
    )


def _check_paired_args(
    systems: Sequence[Sequence[str]], method: str, n_samples: int | None, seed: int | None
) -> int:
    if method not in PAIRED_METHODS:
        raise ConfigError(f"paired method {method!r} is unknown; choose one of: bs, ar")
    if len(systems) < 2:
        raise InputError(
            f"a paired test needs a baseline and at least one other system; got {len(systems)}"
        )
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"n_samples={n_samples} must be >= 1")
    if seed == 0:
        raise ConfigError("seed=0 means 'no seed' to sacreBLEU's paired tests; pick another seed")
    return n_samples if n_samples is not None else DEFAULT_PAIRED_SAMPLES[method]


@contextmanager
def _sacrebleu_seed(seed: int | None) -> Iterator[None]:
    # PairedTest reads its seed from this variable only (as the sacrebleu command does).
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = "none" if seed is None else str(seed)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old


def _paired_score(result: Result) -> PairedScore:
    def opt(value: float | None) -> float | None:
        return None if value is None else float(value)

    return PairedScore(float(result.score), opt(result.mean), opt(result.ci), opt(result.p_value))
