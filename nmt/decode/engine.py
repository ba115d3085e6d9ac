"""Lines in, one :class:`Translation` per line out, in order, written once for every engine
(:class:`BaseTranslator`, on top of :class:`~nmt.decode.backend.Backend`; engines:
:mod:`nmt.decode.translate`, :mod:`nmt.decode.ct2`): tokenization and target tags, truncation,
empty lines, streaming, results. ``nmt translate``, the Python API and ``nmt serve`` (which
batches already encoded rows of several requests: :meth:`BaseTranslator.encode`,
:meth:`BaseTranslator.search_encoded`, :meth:`BaseTranslator.results`) all go through it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import torch

from nmt.config import DecodeConfig
from nmt.data.targets import Targets, checked_tags
from nmt.data.tokenizer import Tokenizer
from nmt.decode.attention import Attention
from nmt.decode.backend import Request
from nmt.decode.forced import normalized
from nmt.decode.results import Encoded, Translation, collected, empty_result, translation
from nmt.decode.sampling import fresh_seed, sentence_seed
from nmt.decode.search import Hypothesis
from nmt.decode.streaming import available_chunks, length_batches, paired
from nmt.errors import ConfigError, InputError


class BaseTranslator:
    """Lines in, translations out, on top of an engine's search (the
    :class:`~nmt.decode.backend.Backend` methods its subclass implements: :meth:`search_rows`,
    :meth:`check_options`, :meth:`forced_scores`, :meth:`cross_attention`).

    Args:
        tokenizer: the tokenizer of a call that names no target language (tagged for the
            target chosen at load, if any); decode: default search settings (each call may
            pass its own).
        chunk_lines: input lines translated together at most (bounds memory).
        max_positions: the model's position limit; sources are cut to one less (EOS).
        strict: raise :class:`InputError` for a source longer than that instead of cutting.
        targets: the model's target languages and their tokenizers (default: the one of
            ``tokenizer``).
    """

    lazy_batches = False  # search_rows runs a batch only when asked for the next one

    def __init__(
        self,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None,
        chunk_lines: int,
        max_positions: int,
        strict: bool = False,
        targets: Targets | None = None,
    ):
        self.tokenizer = tokenizer
        self.decode = decode or DecodeConfig()
        self.chunk_lines = chunk_lines
        self.max_src_tokens = max_positions - 1  # room for EOS
        self.strict = strict
        self.targets = targets or Targets(tokenizer, [], None, None)

    def options(self, decode: DecodeConfig | None, prefixes: bool = False) -> DecodeConfig:
        """The settings of one call, validated here for every caller: ``decode``, else the
        loaded ones; a sampling call without a seed gets a fresh one here, shared by all
        its sentences.

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

    def tokenizer_for(self, tgt_lang: str | None) -> Tokenizer:
        """The source tokenizer that translates into ``tgt_lang`` (``None``: the one chosen
        at load).

        Raises:
            ConfigError: a language the model does not translate into (names them).
        """
        return self.tokenizer if tgt_lang is None else self.targets.tokenizer(tgt_lang)

    def translate(
        self,
        lines: Iterable[str],
        decode: DecodeConfig | None = None,
        target_prefixes: Iterable[str] | None = None,
        prefix_source: str = "target prefixes",
        tgt_lang: str | None = None,
    ) -> Iterator[Translation]:
        """Translate ``lines`` (without newlines), yielding one result per line, in order.

        Args:
            decode: this call's settings (default: those given at load).
            target_prefixes: one per line (an empty string = none): each translation starts
                with it, teacher-forced, and the search continues from there.
            prefix_source: what to call the prefixes in errors (e.g. their file's name).
            tgt_lang: the target language (default: the one chosen at load).

        Raises:
            InputError: see :meth:`encode` (line numbers counted from 1 over all of
                ``lines``); prefixes not one per line.
            ConfigError: settings the engine cannot apply, or an unknown ``tgt_lang``.
        """
        d = self.options(decode, target_prefixes is not None)
        first = 1
        if target_prefixes is None:
            for chunk in available_chunks(lines, self.chunk_lines):
                yield from self.translate_chunk(chunk, first, d, None, tgt_lang)
                first += len(chunk)
            return
        for pairs in available_chunks(
            paired(lines, target_prefixes, prefix_source), self.chunk_lines
        ):
            chunk, prefixes = [p[0] for p in pairs], [p[1] for p in pairs]
            yield from self.translate_chunk(chunk, first, d, prefixes, tgt_lang)
            first += len(chunk)

    def translate_chunk(
        self,
        lines: list[str],
        first_line: int = 1,
        decode: DecodeConfig | None = None,
        target_prefixes: list[str] | None = None,
        tgt_lang: str | None = None,
    ) -> list[Translation]:
        """Translate a list of lines held in memory (``first_line``: number of ``lines[0]``);
        arguments as :meth:`translate`."""
        d = self.options(decode, target_prefixes is not None)
        enc = self.encode(lines, d, first_line, target_prefixes, tgt_lang)
        results = self.results(enc, self.searched(enc, d), d, lines)
        for row, r in enumerate(results):
            if r.failure is not None:
                warnings.warn(
                    f"input line {first_line + row}: {r.failure}; its translation is empty",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return results

    def encode(
        self,
        lines: list[str],
        d: DecodeConfig,
        first_line: int = 1,
        target_prefixes: list[str] | None = None,
        tgt_lang: str | None = None,
    ) -> Encoded:
        """The one way lines become what the engines search: source ids for ``tgt_lang``
        (:meth:`tokenizer_for`) with exactly one target tag where the model needs one and
        none for a line of no text (:func:`nmt.data.targets.checked_tags`), cut to the
        model's limit; target-prefix ids; each line's sampling seed (from ``d.seed`` and its
        line number, :func:`nmt.decode.sampling.sentence_seed`) when ``d`` samples.

        Raises:
            InputError: with ``strict``, a line longer than the limit; a prefix longer than
                the model can output; a line with two different target tags or, for a model
                of several target languages, none (each names the line, counted from
                ``first_line``).
            ConfigError: an unknown ``tgt_lang``.
        """
        tokenizer = self.tokenizer_for(tgt_lang)
        ids = checked_tags(tokenizer.encode(lines), tokenizer, self.targets.tags, first_line)
        too_long = [len(x) > self.max_src_tokens for x in ids]
        if self.strict and any(too_long):
            i = too_long.index(True)
            raise InputError(
                f"input line {first_line + i} has {len(ids[i])} tokens, the model takes at most "
                f"{self.max_src_tokens}; shorten it, or drop --strict to cut it with a warning"
            )
        prefixes = None
        if target_prefixes is not None:
            prefixes = self.prefix_ids(target_prefixes, first_line, tokenizer=tokenizer)
        seeds = None
        if d.sampling and d.seed is not None:
            seeds = [sentence_seed(d.seed, first_line + i) for i in range(len(lines))]
        cut = [x[: self.max_src_tokens] for x in ids]
        return Encoded(cut, too_long, prefixes, seeds, tokenizer)

    def search_encoded(
        self, enc: Encoded, d: DecodeConfig, live: Callable[[int], bool] | None = None
    ) -> list[list[Hypothesis]]:
        """The n-best list of each row of ``enc`` (``[]`` for an empty row or one left out):
        :meth:`searched`'s batches, collected."""
        return collected(enc, self.searched(enc, d, live))

    def searched(
        self, enc: Encoded, d: DecodeConfig, live: Callable[[int], bool] | None = None
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Search the non-empty rows of ``enc``; yields ``(rows of enc, n-best lists)`` per
        batch as the engine finishes it.

        ``live``: with it, a row for which it turns false is left out of the search where
        the engine allows: before each batch when the engine searches its batches lazily
        (:attr:`lazy_batches`: the batches stay those it would have made, longest first),
        else once before the search (``nmt serve`` drops the lines of requests that timed
        out).
        """
        wanted = [r for r, x in enumerate(enc.ids) if x]
        while wanted:
            rows = wanted if live is None else [r for r in wanted if live(r)]
            if not rows:
                return
            sub = Request(
                d,
                None if enc.prefixes is None else [enc.prefixes[r] for r in rows],
                None if enc.seeds is None else [enc.seeds[r] for r in rows],
            )
            batches = self.search_rows([enc.ids[r] for r in rows], sub)
            searched: set[int] = set()
            for batch, hyps in batches:
                yield [rows[r] for r in batch], hyps
                searched.update(rows[r] for r in batch)
                if live is not None and self.lazy_batches:
                    break
            getattr(batches, "close", lambda: None)()  # the generator's next batch is not run
            if live is None or not self.lazy_batches or not searched:
                return
            wanted = [r for r in rows if r not in searched]

    def results(
        self,
        enc: Encoded,
        found: list[list[Hypothesis]] | Iterable[tuple[list[int], list[list[Hypothesis]]]],
        d: DecodeConfig,
        lines: list[str] | None = None,
        attention: list[bool] | None = None,
    ) -> list[Translation]:
        """One :class:`Translation` per row of ``enc`` from its hypotheses: ``found`` as
        :meth:`search_encoded` gives them (an empty list: an empty translation), or
        :meth:`searched`'s batches, each turned into results as it arrives (while the
        engine's workers search the next ones).

        Args:
            lines: the source lines (needed for ``d.alignment``'s word alignment).
            attention: rows whose hypotheses get their cross-attention
                (:meth:`cross_attention`, one batched pass over all of them).
        """
        if not isinstance(found, list):
            if attention is not None:
                found = collected(enc, found)
            else:  # streamed: results made while the search goes on
                out = [empty_result(d, t) for t in enc.truncated]
                for rows, hyps_of_rows in found:
                    for r, hyps in zip(rows, hyps_of_rows, strict=True):
                        line = "" if lines is None else lines[r]
                        out[r] = translation(
                            self.tokenizer, line, enc.ids[r], hyps, d, enc.truncated[r],
                            src_tokenizer=enc.tokenizer, tags=self.targets.tags,
                        )  # fmt: skip
                return out
        weights = self.hypothesis_attention(enc.ids, found, attention)
        return [
            translation(
                self.tokenizer, "" if lines is None else lines[r], enc.ids[r], hyps, d,
                enc.truncated[r], weights[r], enc.tokenizer, self.targets.tags,
            ) if hyps else empty_result(d, enc.truncated[r])
            for r, hyps in enumerate(found)
        ]  # fmt: skip

    def hypothesis_attention(
        self, ids: list[list[int]], found: list[list[Hypothesis]], asked: list[bool] | None
    ) -> list[list[Attention] | None]:
        """The cross-attention of every hypothesis of the ``asked`` rows (``None`` for the
        others), in one batched pass (:meth:`cross_attention`)."""
        if asked is None or not any(asked):
            return [None for _ in found]
        pairs = [(r, h.tokens) for r, hyps in enumerate(found) if asked[r] for h in hyps]
        weights = iter(self.cross_attention([ids[r] for r, _ in pairs], [t for _, t in pairs]))
        return [
            [Attention.of(next(weights)) for _ in hyps] if asked[r] else None
            for r, hyps in enumerate(found)
        ]

    def prefix_ids(
        self,
        prefixes: list[str],
        first_line: int,
        what: str = "target prefix",
        tokenizer: Tokenizer | None = None,
    ) -> list[list[int]]:
        """Token ids of target prefixes or targets (an empty line = ``[]``).

        Raises:
            InputError: one longer than the model can output (names the line).
        """
        ids = (tokenizer or self.tokenizer).encode_target(prefixes)
        for i, x in enumerate(ids):
            if len(x) > self.max_src_tokens:
                raise InputError(
                    f"{what} of line {first_line + i} has {len(x)} tokens, the model "
                    f"outputs at most {self.max_src_tokens}; shorten it"
                )
        return ids

    def pieces(self, ids: list[int], source: bool = False) -> list[str]:
        """The pieces of target (or ``source``) ``ids`` followed by ``</s>`` (the labels of
        their attention)."""
        piece = self.tokenizer.source_piece if source else self.tokenizer.piece
        return [piece(i) for i in [*ids, self.tokenizer.eos_id]]

    def score_targets(
        self,
        lines: Iterable[str],
        targets: Iterable[str],
        decode: DecodeConfig | None = None,
        target_source: str = "targets",
        tgt_lang: str | None = None,
    ) -> Iterator[tuple[float, float]]:
        """Score given translations instead of translating (forced decoding).

        Each target line is encoded with the model's target tokenizer, so a translation's
        text is scored in SentencePiece's own segmentation of it, which can differ from the
        one search happened to produce (then its score differs from the one search
        reported; on the same ids, :func:`nmt.decode.forced.forced_scores` equals it).

        Args:
            targets: one per line of ``lines`` (read from ``target_source``, named in errors).
            decode: its ``length_penalty`` and batch sizes apply.
            tgt_lang: the target language (default: the one chosen at load): the sources are
                encoded for it as :meth:`translate` encodes them (:meth:`encode`).

        Yields:
            ``(log-probability, length-normalised score)`` per line, in order (natural log,
            EOS included; an empty target scores EOS alone).

        Raises:
            InputError: not one target per line, or a line too long (``strict``) or a target
                longer than the model can output.
            ConfigError: an engine that cannot score (:meth:`forced_scores`), a
                ``shortlist`` setting (scores are over the whole vocabulary), or an unknown
                ``tgt_lang``.
        """
        d = decode or self.decode
        if d.shortlist:
            raise ConfigError(
                "shortlist (--shortlist) restricts search's output vocabulary; scoring given "
                "translations (--score-target) needs the whole vocabulary: drop --shortlist"
            )
        tokenizer = self.tokenizer_for(tgt_lang)  # an unknown language fails before any line
        first = 1
        for pairs in available_chunks(
            paired(lines, targets, target_source, "target"), self.chunk_lines
        ):
            src_ids = self.encode([p[0] for p in pairs], d, first, tgt_lang=tgt_lang).ids
            tgt_ids = self.prefix_ids([p[1] for p in pairs], first, "target", tokenizer)
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
