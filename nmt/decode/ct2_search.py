"""The search of the CTranslate2 engine (Klein et al. 2020): :class:`CT2Search`, what
:class:`nmt.decode.ct2.CT2Translator` (which loads an exported folder and checks a call's
options) runs for a batch of source ids, so that its outputs agree with the torch engine's.

How our search maps onto ``Translator.translate_batch``:

- Batches and length limit: ours is per sentence, ``a * src_len + b`` tokens before EOS (EOS
  forced there, with the model's own EOS log-probability; CTranslate2 adds none there, and
  this engine keeps CTranslate2's score, so a cut hypothesis scores higher here than in the
  torch engine and may rank differently); CTranslate2 takes one ``max_decoding_length`` per call
  and stops a hypothesis after that many tokens. Each call is one of the torch engine's batches
  (sorted by length, so their limits are close), searched with its longest limit. A sentence
  whose search ended before its own limit found what a search with that limit finds (the steps
  before it are the same computation; :meth:`CT2Search.within_limit`); the others are
  searched again in batches that share their limit, passed as it is: the tokens of a
  hypothesis that reaches it agree. (Grouping every call by limit instead gave batches of 19
  sentences on average instead of 31 on test_2016_flickr with batch 32, and ran 2-17% slower.)
- Threads: all batches of a chunk are submitted at once (``asynchronous=True``), so that
  CTranslate2's ``inter_threads`` workers run them in parallel (:func:`nmt.decode.ct2.ct2_threads`).
- Length penalty: ours is GNMT's ``((5 + len) / 6) ** alpha`` with ``len`` counting EOS (Wu et
  al. 2016, eq. 14); CTranslate2 divides by ``len ** p`` (``len`` without EOS unless
  ``return_end_token``) and cannot take another formula. So CTranslate2 only collects the
  finished hypotheses and we rank them: it returns all ``beam_size`` of them with
  ``return_end_token=True`` (``len`` >= 1), each log-probability is recovered as
  ``score * len ** p`` and ranked here with the GNMT penalty (:meth:`CT2Search._hypotheses`).
- Which hypotheses are collected: we stop a sentence at ``beam_size`` finished hypotheses and
  keep the first ones, in step order, then by score; CTranslate2 stops at the same point but
  keeps every hypothesis that ends on the last step and then the ``beam_size`` best by
  ``score / len ** p``. With ``p`` = 1 that keeps long hypotheses and drops the short, often
  best, ones (1.3% of beam-5 outputs changed on Multi30k with alpha 0). A negative ``p`` whose
  size makes length dominate (:func:`collect_penalty`) orders them by length, i.e. by step, then
  by score, as we do. (``p`` = 0 is no way out: it makes CTranslate2 stop as soon as the best
  beam ends.) Greedy search runs with ``p`` = 0, whose score is the plain log-probability.
- What still differs: floating-point rounding of the two engines (an argmax can flip where two
  tokens are within ~1e-6; the batches' composition changes scores by ~1e-5), and, for a
  sentence that reaches its length limit with fewer places left than candidates on the last
  step, CTranslate2 keeps the best-scored of those candidates, while we keep the ones ending with
  EOS first (CTranslate2 counts them as long as the ones it cuts there, which we end one step
  later).
- Output constraints: neither engine outputs PAD or BOS. Ours removes them from each step's
  choices without renormalizing (:func:`nmt.decode.search.mask_specials`), so that a score is
  the model's log-probability of the output (what ``--score-target`` gives); CTranslate2's
  ``suppress_sequences`` renormalizes over the other tokens (a trained model gave them
  1.5e-3 nats over a 9-token sentence). So a sentence is searched as before, and only one
  whose hypotheses hold PAD or BOS (an untrained model's, or a separate vocabulary's) is
  searched again with them suppressed, its hypotheses then scored by ``score_batch``
  (:meth:`CT2Search.constrained`): greedy search then chooses as ours does, with our
  scores; beam search compares beams by renormalized scores there, which can rank them
  otherwise where their suppressed masses differ.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nmt.config import DecodeConfig
from nmt.data.targets import Targets
from nmt.data.tokenizer import Tokenizer
from nmt.decode.engine import BaseTranslator, Request
from nmt.decode.search import Hypothesis, length_penalty

PENALTY_EXPONENT_BITS = 100  # len ** -p stays below 2 ** 100: no float32 overflow of score / ...


def collect_penalty(limit: int) -> float:
    """The CTranslate2 ``length_penalty`` that makes it keep finished hypotheses in our order.

    CTranslate2 sorts them by ``score / len ** p``; with ``p = -q`` that is ``score * len ** q``
    (scores are negative), so a shorter hypothesis comes first unless its score is worse by a
    factor above ``((len + 1) / len) ** q``. ``q`` is as large as float32 allows for lengths up
    to ``limit``: for lengths near the limit the factor is 1.7 at ``limit`` = 37, 1.16 at 100.
    """
    # A multiple of 1/8 is exact in float32, so that CTranslate2 and _hypotheses use one value.
    return -math.floor(8 * PENALTY_EXPONENT_BITS / math.log2(limit + 1)) / 8


class CT2Search(BaseTranslator):
    """A CTranslate2 ``Translator`` searched as nmt searches: nmt's batches, length limits,
    output constraints and hypothesis ranking (the module's notes); loading and the options
    check are :class:`~nmt.decode.ct2.CT2Translator`'s.

    Args:
        translator: a loaded ``ctranslate2.Translator``.
        tokenizer: the SentencePiece model the exported model was trained with.
        decode: search settings (beam size, length penalty, length limit, nbest, batching).
        chunk_lines: input lines read and translated together (bounds memory).
        max_positions: the model's position table size (sources are cut to one less, as in
            :class:`nmt.decode.translate.Translator`).
        strict: raise for an over-long source instead of cutting it.
        vmap: the folder's vocabulary map (``vmap.txt``, written by ``nmt export`` from a
            shortlist), which ``DecodeConfig.shortlist`` makes CTranslate2 use; ``None`` if
            it has none.
    """

    def __init__(
        self,
        translator: Any,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None = None,
        chunk_lines: int = 2000,
        max_positions: int = 1024,
        strict: bool = False,
        targets: Targets | None = None,
        vmap: Path | None = None,
    ):
        super().__init__(tokenizer, decode, chunk_lines, max_positions, strict, targets)
        self.translator = translator
        self.vmap = vmap
        self.max_tgt_tokens = max_positions - 1  # as nmt.decode.search.max_lengths' cap
        self.tgt_vocab = tokenizer.vocabulary()  # target pieces by id (not BaseTranslator.pieces)
        self.src_vocab = tokenizer.source_vocabulary()  # the same list for a joint vocabulary
        self.piece_ids = {piece: i for i, piece in enumerate(self.tgt_vocab)}
        self.specials = {tokenizer.pad_id, tokenizer.bos_id}  # never output (both engines)

    def forced_scores(self, src: list[list[int]], tgt: list[list[int]]) -> list[float]:
        """Log-probabilities of given targets through CTranslate2's ``score_batch`` (which
        appends EOS to both sides, as the export configures): the sum of its per-token
        log-probabilities, EOS included (Klein et al. 2020)."""
        return [float(sum(lp)) for lp in self.token_log_probs(src, tgt)]

    def token_log_probs(self, src: list[list[int]], tgt: list[list[int]]) -> list[list[float]]:
        """CTranslate2's ``score_batch``: the log-probability of each target token given the
        source and the tokens before it, then of EOS, which it appends (ids without EOS)."""
        results = self.translator.score_batch(
            [[self.src_vocab[i] for i in x] for x in src],
            [[self.tgt_vocab[i] for i in t] for t in tgt],
            max_batch_size=len(src),
            max_input_length=0,
        )
        return [list(r.log_probs) for r in results]

    def search_rows(
        self, ids: list[list[int]], request: Request | None = None
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """The torch engine's batches (:func:`nmt.decode.translate.length_batches`), each
        searched with its largest length limit; then, grouped by their own limit, the sentences
        whose search that limit would have cut (:meth:`within_limit`)."""
        d = request.decode if request is not None else self.decode
        prefixes = request.prefixes if request is not None else None
        todo = [i for i, x in enumerate(ids) if x]
        limits = dict(zip(todo, self.limits([len(ids[i]) for i in todo], d)))
        if prefixes is not None:  # a prefix is never cut (as nmt.decode.search.max_lengths)
            limits = {r: max(limit, len(prefixes[r])) for r, limit in limits.items()}
        jobs = [(max(limits[r] for r in rows), rows) for rows in self.row_batches(ids, todo, d)]
        cut: list[int] = []
        for limit, rows, found in self.search_batches(ids, jobs, d, prefixes):
            done = [
                limits[r] == limit or self.within_limit(h, limits[r]) for r, h in zip(rows, found)
            ]
            cut += [r for r, ok in zip(rows, done) if not ok]
            if any(done):
                yield (
                    [r for r, ok in zip(rows, done) if ok],
                    [h[: d.nbest] for h, ok in zip(found, done) if ok],
                )
        jobs = self.limit_batches(cut, limits, ids, d)
        for _, rows, found in self.search_batches(ids, jobs, d, prefixes):
            yield rows, [h[: d.nbest] for h in found]

    def limits(self, src_lengths: list[int], decode: DecodeConfig | None = None) -> list[int]:
        """Each sentence's target limit ``min(a * src_len + b, max_positions - 1)`` (tokens
        before EOS; ``src_len`` without EOS), computed in float32 as
        :func:`nmt.decode.search.max_lengths` does, so that both engines agree at the boundaries."""
        d = decode or self.decode
        src_len = torch.tensor(src_lengths, dtype=torch.float32)
        limits = ((src_len * d.max_len_a).long() + d.max_len_b).clamp(max=self.max_tgt_tokens)
        return limits.tolist()

    def limit_batches(
        self,
        rows: list[int],
        limits: dict[int, int],
        ids: list[list[int]],
        decode: DecodeConfig | None = None,
    ) -> list[tuple[int, list[int]]]:
        """``(limit, rows)``: ``rows`` grouped by their length limit, longest limit first, each
        group cut by ``batch_size`` sentences and ``batch_tokens`` padded tokens (EOS counted)."""
        groups: dict[int, list[int]] = {}
        for r in rows:
            groups.setdefault(limits[r], []).append(r)
        return [
            (limit, batch)
            for limit in sorted(groups, reverse=True)
            for batch in self.row_batches(ids, groups[limit], decode)
        ]

    @staticmethod
    def within_limit(hyps: list[Hypothesis], limit: int) -> bool:
        """Whether a search run with a longer length limit found what one with ``limit``
        would have: all its hypotheses ended with EOS before ``limit`` tokens.

        Both searches compute the same steps up to step ``limit - 1``. The one with ``limit``
        then ends every live hypothesis (our search forces EOS, CTranslate2 stops) unless the
        sentence already has ``beam_size`` finished ones; the longer one instead goes on, and
        returns ``beam_size`` hypotheses of which fewer than ``beam_size`` ended before
        ``limit`` tokens, so at least one is longer. (A hypothesis without EOS is one cut at
        the longer limit, so it is longer too.)
        """
        return all(len(h.tokens) < limit for h in hyps)

    def search_batches(
        self,
        ids: list[list[int]],
        jobs: list[tuple[int, list[int]]],
        decode: DecodeConfig | None = None,
        prefixes: list[list[int]] | None = None,
    ) -> Iterator[tuple[int, list[int], list[list[Hypothesis]]]]:
        """Search the ``(limit, rows)`` jobs, all submitted first so that CTranslate2's
        ``inter_threads`` workers run them in parallel; yields ``(limit, rows, hypotheses)``
        in job order, ``hypotheses`` as :meth:`search` returns them. ``prefixes``: the
        target prefix of each row of ``ids`` (``[]`` = none)."""
        d = decode or self.decode
        pending = []
        for limit, rows in jobs:
            src = [ids[r] for r in rows]
            forced = None if prefixes is None else [prefixes[r] for r in rows]
            pending.append((limit, rows, src, forced, self.submit(src, limit, d, forced)))
        for limit, rows, src, forced, results in pending:
            offsets = self.prefix_log_probs(src, forced)
            found = self._collect(results, limit, d, offsets)
            again = [
                i for i, h in enumerate(found) if any(self.specials & set(x.tokens) for x in h)
            ]
            if again:
                redo = None if forced is None else [forced[i] for i in again]
                for i, hyps in zip(
                    again, self.constrained([src[i] for i in again], limit, d, redo)
                ):
                    found[i] = hyps
            yield limit, rows, found

    def constrained(
        self, src: list[list[int]], limit: int, d: DecodeConfig, prefixes: list[list[int]] | None
    ) -> list[list[Hypothesis]]:
        """:meth:`search` with PAD and BOS suppressed (the torch engine's output constraint),
        each hypothesis scored by :meth:`token_log_probs` (the model's log-probability, not
        CTranslate2's renormalized one; EOS counted where the hypothesis ends with it),
        best first by the GNMT-normalized score."""
        found = []
        for x, result in zip(src, self.submit(src, limit, d, prefixes, suppress=True)):
            seqs = [[self.piece_ids[p] for p in h] for h in result.result().hypotheses]
            ended = [bool(t) and t[-1] == self.tokenizer.eos_id for t in seqs]
            tokens = [t[:-1] if e else t for t, e in zip(seqs, ended)]
            hyps = []
            for t, e, lps in zip(tokens, ended, self.token_log_probs([x] * len(tokens), tokens)):
                score = float(sum(lps if e else lps[:-1]))
                lp = length_penalty(len(t) + 1, d.length_penalty) if d.beam_size > 1 else 1.0
                hyps.append(Hypothesis(t, score, score / lp))
            found.append(sorted(hyps, key=lambda h: -h.normalized))
        return found

    def search(
        self,
        src: list[list[int]],
        limit: int,
        decode: DecodeConfig | None = None,
        prefixes: list[list[int]] | None = None,
    ) -> list[list[Hypothesis]]:
        """Search a batch of sources with at most ``limit`` target tokens before EOS.

        Args:
            src: token ids of each source sentence (non-empty, without EOS: CTranslate2
                appends it, see ``add_source_eos`` in the exported config).
            limit: CTranslate2's ``max_decoding_length`` (target prefixes count in it).
            prefixes: each sentence's target prefix ids (``[]`` = none), teacher-forced
                (CTranslate2's ``target_prefix``).

        Returns:
            For each sentence, all the hypotheses CTranslate2 kept (``beam_size`` of them),
            best first by the GNMT-normalized score; scores include the prefix's
            log-probability, as the torch engine's do.
        """
        job = (limit, list(range(len(src))))  # the whole batch, one call
        ((_, _, found),) = self.search_batches(src, [job], decode, prefixes)
        return found

    def submit(
        self,
        src: list[list[int]],
        limit: int,
        d: DecodeConfig,
        prefixes: list[list[int]] | None = None,
        suppress: bool = False,
    ) -> list[Any]:
        """Queue a batch for CTranslate2's workers; one ``AsyncTranslationResult`` per source.
        ``suppress``: PAD and BOS are never output (CTranslate2's ``suppress_sequences``)."""
        target_prefix = None
        if prefixes is not None and any(prefixes):
            target_prefix = [[self.tgt_vocab[i] for i in p] for p in prefixes]
        return self.translator.translate_batch(
            [[self.src_vocab[i] for i in x] for x in src],
            target_prefix=target_prefix,
            beam_size=d.beam_size,
            num_hypotheses=d.beam_size,
            length_penalty=self.ct2_penalty(limit, d),
            max_decoding_length=limit,
            min_decoding_length=0,
            max_input_length=0,
            return_scores=True,
            return_end_token=True,
            asynchronous=True,
            suppress_sequences=[[self.tgt_vocab[i]] for i in sorted(self.specials)]
            if suppress
            else None,
            use_vmap=d.shortlist,
        )

    def prefix_log_probs(
        self, src: list[list[int]], prefixes: list[list[int]] | None
    ) -> list[float]:
        """log P(prefix | source) of each sentence (0 without one), :meth:`token_log_probs`
        without the final EOS: CTranslate2's translation scores leave the forced prefix out
        (while normalizing by the whole length), and ours include it."""
        if prefixes is None or not any(prefixes):
            return [0.0] * len(src)
        rows = [i for i, p in enumerate(prefixes) if p]
        found = self.token_log_probs([src[i] for i in rows], [prefixes[i] for i in rows])
        out = [0.0] * len(src)
        for i, log_probs in zip(rows, found):
            out[i] = float(sum(log_probs[:-1]))
        return out

    def ct2_penalty(self, limit: int, d: DecodeConfig) -> float:
        """The ``length_penalty`` given to CTranslate2 for a call with this ``limit``: 0 (plain
        log-probabilities) for greedy search, else :func:`collect_penalty`."""
        return 0.0 if d.beam_size == 1 else collect_penalty(limit)

    def _collect(
        self, results: list[Any], limit: int, d: DecodeConfig, offsets: list[float]
    ) -> list[list[Hypothesis]]:
        """Wait for :meth:`submit`'s results; ours, ranked by the GNMT length penalty, each
        sentence's scores plus its ``offsets`` (:meth:`prefix_log_probs`)."""
        penalty = self.ct2_penalty(limit, d)
        return [self._hypotheses(r.result(), penalty, d, o) for r, o in zip(results, offsets)]

    def _hypotheses(
        self, result: Any, penalty: float, d: DecodeConfig, offset: float = 0.0
    ) -> list[Hypothesis]:
        """One ``TranslationResult`` → our hypotheses, best first by the GNMT length penalty."""
        hyps = []
        for pieces, score in zip(result.hypotheses, result.scores):
            ids = [self.piece_ids[p] for p in pieces]
            score *= len(ids) ** penalty  # undo CTranslate2's score / len ** p (len >= 1)
            score += offset  # the forced prefix, which CTranslate2 leaves out
            if ids and ids[-1] == self.tokenizer.eos_id:
                ids = ids[:-1]
            # Length with EOS: a hypothesis cut at the limit gets it forced in our search.
            lp = length_penalty(len(ids) + 1, d.length_penalty) if d.beam_size > 1 else 1.0
            hyps.append(Hypothesis(ids, float(score), float(score) / lp))
        return sorted(hyps, key=lambda h: -h.normalized)
