"""What the lines layer (:class:`nmt.decode.engine.BaseTranslator`) hands the engines and
gives back: lines as encoded for search (:class:`Encoded`) and one :class:`Translation` per
line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nmt.data.tokenizer import Tokenizer
from nmt.decode.attention import Attention

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
