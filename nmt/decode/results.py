"""What the lines layer (:class:`nmt.decode.engine.BaseTranslator`) hands the engines and
gives back: lines as encoded for search (:class:`Encoded`) and one :class:`Translation` per
line, made from a line's hypotheses (:func:`translation`, :func:`empty_result`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from nmt.config import DecodeConfig
from nmt.data.tokenizer import Tokenizer
from nmt.decode.alignment import line_alignment
from nmt.decode.attention import Attention
from nmt.decode.search import Hypothesis

NAN_SCORE = "the search's best output has a NaN score (an overflow in the model?)"


@dataclass(frozen=True)
class Translation:
    """The result for one input line.

    Attributes:
        text: the best translation (empty for an empty input line).
        score: its log-probability (natural log, EOS included); 0 for an empty line.
        nbest: ``(text, score)`` of the best hypotheses, best first (``DecodeConfig.nbest``).
        nbest_normalized: the length-normalised score of each, what ranked them (GNMT
            penalty, Wu et al. 2016; the log-probability itself for greedy search).
        truncated: the source was longer than the model allows and was cut.
        alignment: with ``DecodeConfig.alignment``, ``(source word, target word)`` pairs
            (0-based whitespace words of the input line and of ``text``), one per target
            word (:mod:`nmt.decode.alignment`); else ``None``.
        failure: why the line has no translation although it is not empty (its search
            found no output ending in EOS, or one of NaN score): ``text`` is then empty,
            ``score`` ``-inf``, and a ``RuntimeWarning`` names the line; else ``None``.
        src_tokens: the source ids searched (after any tag and cut; ``[]`` for an empty line).
        tokens: the target ids of each n-best hypothesis (``[]``: none, an empty or failed
            line).
        attention: when asked for (:meth:`BaseTranslator.results`), the cross-attention of
            each of them (:class:`~nmt.decode.attention.Attention`); else ``None``.
    """

    text: str
    score: float
    nbest: list[tuple[str, float]] = field(default_factory=list)
    truncated: bool = False
    alignment: list[tuple[int, int]] | None = None
    nbest_normalized: list[float] = field(default_factory=list)
    failure: str | None = None
    src_tokens: list[int] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    attention: list[Attention] | None = None


@dataclass(frozen=True)
class Encoded:
    """Lines as the engines search them (:meth:`BaseTranslator.encode`).

    Attributes:
        ids: source ids of each line, without EOS, tagged and cut; ``[]`` for a line of no
            text (not searched: its translation is empty).
        truncated: which lines were cut to the model's limit.
        prefixes: target-prefix ids of each line (``[]`` = none), or ``None``.
        seeds: each line's sampling seed when sampling, else ``None``.
        tokenizer: the source tokenizer that encoded them (the call's target language:
            word alignment reads its tag), or ``None`` for the engine's own.
    """

    ids: list[list[int]]
    truncated: list[bool]
    prefixes: list[list[int]] | None = None
    seeds: list[int] | None = None
    tokenizer: Tokenizer | None = None


def collected(
    enc: Encoded, batches: Iterable[tuple[list[int], list[list[Hypothesis]]]]
) -> list[list[Hypothesis]]:
    """Each row's n-best list from :meth:`searched`'s batches (``[]`` for the others)."""
    found: list[list[Hypothesis]] = [[] for _ in enc.ids]
    for rows, hyps in batches:
        for r, h in zip(rows, hyps, strict=True):
            found[r] = h
    return found


def empty_result(d: DecodeConfig, truncated: bool = False) -> Translation:
    """The translation of a line of no text (or one left out): empty, score 0."""
    alignment = [] if d.alignment else None
    return Translation("", 0.0, [("", 0.0)] * d.nbest, truncated, alignment, [0.0] * d.nbest)


def translation(
    tokenizer: Tokenizer,
    line: str,
    src_ids: list[int],
    hyps: list[Hypothesis],
    d: DecodeConfig,
    truncated: bool = False,
    attention: list[Attention] | None = None,
    src_tokenizer: Tokenizer | None = None,
    tags: Collection[int] = (),
) -> Translation:
    """The :class:`Translation` of one line from its hypotheses (best first), their texts
    decoded by ``tokenizer`` (the engine's); with ``d.alignment``, the word alignment from the
    best one's ``attention``, reading the source with ``src_tokenizer`` (the one that encoded
    it; default ``tokenizer``), whose target tags (``tags``, source ids) are no words
    (:func:`nmt.decode.alignment.line_alignment`)."""
    best = hyps[0]
    failure = best.failure or (NAN_SCORE if math.isnan(best.score) else None)
    if failure is not None:
        inf = float("-inf")
        nothing = [("", inf)] * d.nbest
        return Translation("", inf, nothing, truncated, [] if d.alignment else None,
                           [inf] * d.nbest, failure, src_ids)  # fmt: skip
    texts = tokenizer.decode([h.tokens for h in hyps])
    nbest = [(t, h.score) for t, h in zip(texts, hyps)]
    links = None
    if d.alignment and best.attention is not None:
        links = line_alignment(
            src_tokenizer or tokenizer, line, src_ids, best.tokens, texts[0], best.attention,
            tags,
        )  # fmt: skip
    normalized = [h.normalized for h in hyps]
    tokens = [h.tokens for h in hyps]
    return Translation(
        texts[0],
        best.score,
        nbest,
        truncated,
        links,
        normalized,
        None,
        src_ids,
        tokens,
        attention,
    )
