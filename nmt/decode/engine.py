"""What every translation engine shares: lines in, one :class:`Translation` per line out, in
order; tokenization, truncation and empty lines; batches of similar length handed to the
engine's search (:class:`BaseTranslator`; engines: :mod:`nmt.decode.translate`,
:mod:`nmt.decode.ct2`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch

from nmt.config import DecodeConfig
from nmt.data.tokenizer import Tokenizer
from nmt.decode.alignment import line_alignment
from nmt.decode.forced import normalized
from nmt.decode.sampling import fresh_seed, sentence_seed
from nmt.decode.search import Hypothesis
from nmt.decode.streaming import available_chunks, length_batches, paired
from nmt.errors import ConfigError, InputError

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
    """

    text: str
    score: float
    nbest: list[tuple[str, float]] = field(default_factory=list)
    truncated: bool = False
    alignment: list[tuple[int, int]] | None = None
    nbest_normalized: list[float] = field(default_factory=list)
    failure: str | None = None


@dataclass(frozen=True)
class Request:
    """One call's search settings and per-sentence inputs, for :meth:`BaseTranslator.search_rows`.

    Attributes:
        decode: the settings of this call.
        prefixes: target-prefix ids of each row (``[]`` = none), or ``None`` for no prefixes.
        seeds: each row's sampling seed (:func:`nmt.decode.sampling.sentence_seed`) when sampling.
    """

    decode: DecodeConfig
    prefixes: list[list[int]] | None = None
    seeds: list[int] | None = None


class BaseTranslator:
    """What every engine shares: streaming, tokenization, truncation, empty lines, order.

    Subclasses implement :meth:`search_rows`, and :meth:`check_options` for what they cannot do.

    Args:
        tokenizer: the model's SentencePiece model; decode: default search settings (each
            call of :meth:`translate` may pass its own).
        chunk_lines: input lines translated together at most (bounds memory).
        max_positions: the model's position limit; sources are cut to one less (EOS).
        strict: raise :class:`InputError` for a source longer than that instead of cutting.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None,
        chunk_lines: int,
        max_positions: int,
        strict: bool = False,
    ):
        self.tokenizer = tokenizer
        self.decode = decode or DecodeConfig()
        self.chunk_lines = chunk_lines
        self.max_src_tokens = max_positions - 1  # room for EOS
        self.strict = strict

    def options(self, decode: DecodeConfig | None, prefixes: bool = False) -> DecodeConfig:
        """The settings of one call: ``decode``, else the loaded ones; a sampling call without
        a seed gets a fresh one here, shared by all its sentences.

        Raises:
            ConfigError: a setting this engine or model cannot apply (:meth:`check_options`),
                or target prefixes (``prefixes``) where it cannot force them.
        """
        d = decode or self.decode
        if d.sampling and d.seed is None:
            d = replace(d, seed=fresh_seed())
        self.check_options(d, prefixes)
        return d

    def check_options(self, d: DecodeConfig, prefixes: bool) -> None:
        """Raise :class:`ConfigError` for settings this engine cannot apply (none here)."""

    def translate(
        self,
        lines: Iterable[str],
        decode: DecodeConfig | None = None,
        target_prefixes: Iterable[str] | None = None,
        prefix_source: str = "target prefixes",
    ) -> Iterator[Translation]:
        """Translate ``lines`` (without newlines), yielding one result per line, in order.

        Args:
            decode: this call's settings (default: those given at load).
            target_prefixes: one per line (an empty string = none): each translation starts
                with it, teacher-forced, and the search continues from there.
            prefix_source: what to call the prefixes in errors (e.g. their file's name).

        Raises:
            InputError: with ``strict``, a line longer than the model allows (line number
                counted from 1 over all of ``lines``); prefixes not one per line.
            ConfigError: settings the engine cannot apply.
        """
        d = self.options(decode, target_prefixes is not None)
        first = 1
        if target_prefixes is None:
            for chunk in available_chunks(lines, self.chunk_lines):
                yield from self.translate_chunk(chunk, first, d)
                first += len(chunk)
            return
        for pairs in available_chunks(
            paired(lines, target_prefixes, prefix_source), self.chunk_lines
        ):
            chunk, prefixes = [p[0] for p in pairs], [p[1] for p in pairs]
            yield from self.translate_chunk(chunk, first, d, prefixes)
            first += len(chunk)

    def translate_chunk(
        self,
        lines: list[str],
        first_line: int = 1,
        decode: DecodeConfig | None = None,
        target_prefixes: list[str] | None = None,
    ) -> list[Translation]:
        """Translate a list of lines held in memory (``first_line``: number of ``lines[0]``);
        arguments as :meth:`translate`."""
        d = self.options(decode, target_prefixes is not None)
        ids, truncated = self.source_ids(lines, first_line)
        prefixes = None if target_prefixes is None else self.prefix_ids(target_prefixes, first_line)
        seeds = None
        if d.sampling and d.seed is not None:
            seeds = [sentence_seed(d.seed, first_line + i) for i in range(len(lines))]
        request = Request(d, prefixes, seeds)
        empty = Translation(
            "", 0.0, [("", 0.0)] * d.nbest, False, [] if d.alignment else None, [0.0] * d.nbest
        )
        results: list[Translation] = [empty] * len(lines)
        for rows, hyps_of_rows in self.search_rows(ids, request):
            for row, hyps in zip(rows, hyps_of_rows, strict=True):
                results[row] = self.result(lines[row], ids[row], hyps, d, truncated[row])
        for row, r in enumerate(results):
            if r.failure is not None:
                warnings.warn(
                    f"input line {first_line + row}: {r.failure}; its translation is empty",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return results

    def source_ids(self, lines: list[str], first_line: int) -> tuple[list[list[int]], list[bool]]:
        """Token ids of ``lines`` cut to the model's limit, and which were cut.

        Raises:
            InputError: with ``strict``, a line longer than the limit (names the line).
        """
        ids = self.tokenizer.encode(lines)
        too_long = [len(x) > self.max_src_tokens for x in ids]
        if self.strict and any(too_long):
            i = too_long.index(True)
            raise InputError(
                f"input line {first_line + i} has {len(ids[i])} tokens, the model takes at most "
                f"{self.max_src_tokens}; shorten it, or drop --strict to cut it with a warning"
            )
        return [x[: self.max_src_tokens] for x in ids], too_long

    def prefix_ids(
        self, prefixes: list[str], first_line: int, what: str = "target prefix"
    ) -> list[list[int]]:
        """Token ids of target prefixes or targets (an empty line = ``[]``).

        Raises:
            InputError: one longer than the model can output (names the line).
        """
        ids = self.tokenizer.encode_target(prefixes)
        for i, x in enumerate(ids):
            if len(x) > self.max_src_tokens:
                raise InputError(
                    f"{what} of line {first_line + i} has {len(x)} tokens, the model "
                    f"outputs at most {self.max_src_tokens}; shorten it"
                )
        return ids

    def result(
        self,
        line: str,
        src_ids: list[int],
        hyps: list[Hypothesis],
        d: DecodeConfig,
        truncated: bool = False,
    ) -> Translation:
        """The :class:`Translation` of one line from its hypotheses (best first); with
        ``d.alignment``, the word alignment from the best one's ``attention``."""
        best = hyps[0]
        failure = best.failure or (NAN_SCORE if math.isnan(best.score) else None)
        if failure is not None:
            inf = float("-inf")
            nothing = [("", inf)] * d.nbest
            return Translation("", inf, nothing, truncated, [] if d.alignment else None,
                               [inf] * d.nbest, failure)  # fmt: skip
        texts = self.tokenizer.decode([h.tokens for h in hyps])
        nbest = [(t, h.score) for t, h in zip(texts, hyps)]
        links = None
        if d.alignment and best.attention is not None:
            links = line_alignment(
                self.tokenizer, line, src_ids, best.tokens, texts[0], best.attention
            )
        normalized = [h.normalized for h in hyps]
        return Translation(texts[0], best.score, nbest, truncated, links, normalized)

    def score_targets(
        self,
        lines: Iterable[str],
        targets: Iterable[str],
        decode: DecodeConfig | None = None,
        target_source: str = "targets",
    ) -> Iterator[tuple[float, float]]:
        """Score given translations instead of translating (forced decoding).

        Each target line is encoded with the model's target tokenizer, so a translation's
        text is scored in SentencePiece's own segmentation of it, which can differ from the
        one search happened to produce (then its score differs from the one search
        reported; on the same ids, :func:`nmt.decode.forced.forced_scores` equals it).

        Args:
            targets: one per line of ``lines`` (read from ``target_source``, named in errors).
            decode: its ``length_penalty`` and batch sizes apply.

        Yields:
            ``(log-probability, length-normalised score)`` per line, in order (natural log,
            EOS included; an empty target scores EOS alone).

        Raises:
            InputError: not one target per line, or a line too long (``strict``) or a target
                longer than the model can output.
            ConfigError: an engine that cannot score (:meth:`forced_scores`), or a
                ``shortlist`` setting (scores are over the whole vocabulary).
        """
        d = decode or self.decode
        if d.shortlist:
            raise ConfigError(
                "shortlist (--shortlist) restricts search's output vocabulary; scoring given "
                "translations (--score-target) needs the whole vocabulary: drop --shortlist"
            )
        first = 1
        for pairs in available_chunks(
            paired(lines, targets, target_source, "target"), self.chunk_lines
        ):
            src_ids, _ = self.source_ids([p[0] for p in pairs], first)
            tgt_ids = self.prefix_ids([p[1] for p in pairs], first, "target")
            scores = [0.0] * len(pairs)
            for rows in self.row_batches(src_ids, list(range(len(pairs))), d):
                found = self.forced_scores([src_ids[r] for r in rows], [tgt_ids[r] for r in rows])
                for r, score in zip(rows, found):
                    scores[r] = score
            for score, tgt in zip(scores, tgt_ids):
                yield score, normalized(score, len(tgt), d.length_penalty)
            first += len(pairs)

    def forced_scores(self, src: list[list[int]], tgt: list[list[int]]) -> list[float]:
        """Log-probability of each target (EOS included) given its source, both without EOS.

        Raises:
            ConfigError: this engine cannot score given translations.
        """
        raise ConfigError("scoring given translations is not supported by this engine")

    def cross_attention(self, src: list[list[int]], targets: list[list[int]]) -> list[torch.Tensor]:
        """Cross-attention of each source (ids without EOS) translated into its target (ids
        without BOS and EOS): one ``(n_layers, n_heads, len(target) + 1, len(source) + 1)``
        float32 tensor per row (:func:`nmt.decode.attention.cross_attention`).

        Raises:
            ConfigError: this engine does not give attention (only the torch engine does).
        """
        raise ConfigError("cross-attention needs the torch engine")

    def search_rows(
        self, ids: list[list[int]], request: Request | None = None
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Search the non-empty sources of ``ids`` in batches; yields ``(rows, nbest lists)``."""
        raise NotImplementedError

    def row_batches(
        self, ids: list[list[int]], rows: list[int], d: DecodeConfig | None = None
    ) -> list[list[int]]:
        """``rows`` of ``ids`` (source ids without EOS) cut into :func:`length_batches` by the
        decode settings' ``batch_tokens`` and ``batch_size`` (EOS counted); each batch is a
        list of rows."""
        lengths = [len(ids[r]) + 1 for r in rows]
        d = d or self.decode
        return [
            [rows[b] for b in batch]
            for batch in length_batches(lengths, d.batch_tokens, d.batch_size)
        ]
