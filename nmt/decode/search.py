"""Greedy and beam search over the incremental decoder.

Beam search is batched over ``(sentences × beam)`` rows and built from small steps: expand
(top 2×beam candidates, so that end-of-sentence picks never shrink the beam; fairseq),
finalize (hypotheses ending in EOS among the top ``beam`` candidates), select (the best
``beam`` continuing candidates) and prune (sentences with ``beam`` finished hypotheses leave
the batch, and their cache rows are dropped). Finished hypotheses are ranked by
``log P / lp(len)`` with the GNMT length penalty ``lp = ((5 + len) / 6) ** alpha``
(Wu et al. 2016, eq. 14), ``len`` counting the EOS token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch

from nmt.config import ModelConfig
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.decode.shortlist import OutputVocab


class Cache(Protocol):
    """The incremental-decoding state search keeps (:class:`nmt.model.cache.DecoderCache`)."""

    def reorder(self, index: torch.Tensor, rows_per_sentence: int | None = None) -> None: ...


class Decoder(Protocol):
    """What search uses of a model: :class:`nmt.model.transformer.Transformer`, or an
    :class:`nmt.decode.ensemble.Ensemble` of them."""

    cfg: ModelConfig

    def encode(self, src: torch.Tensor) -> tuple[Any, torch.Tensor]: ...

    def init_cache(self, memory: Any, src_mask: torch.Tensor) -> Any: ...

    def decode_step(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class Hypothesis:
    """One translation found by search.

    Attributes:
        tokens: target ids, without BOS and EOS.
        score: log-probability of ``tokens`` followed by EOS (natural log).
        normalized: ``score`` divided by the length penalty (what beam search ranks by).
        attention: ``(len(tokens) + 1, src_len)`` cross-attention that aligns it, when asked
            for (:meth:`nmt.decode.translate.Translator.with_attention`); else ``None``.
        failure: why search found no output for its sentence (:func:`no_output`), else
            ``None``.
    """

    tokens: list[int]
    score: float
    normalized: float
    attention: torch.Tensor | None = None
    failure: str | None = None


NO_EOS = "the search found no output ending in EOS (non-finite log-probabilities?)"


def no_output(reason: str = NO_EOS) -> Hypothesis:
    """What search returns for a sentence it found nothing for (no hypothesis reached EOS:
    NaN log-probabilities from an overflow, a sampling temperature so low that the
    probabilities are not finite), so that every sentence of a batch keeps its result:
    no tokens, score ``-inf``, and the ``reason``."""
    return Hypothesis([], float("-inf"), float("-inf"), failure=reason)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(
    src: torch.Tensor,
    a: float,
    b: int,
    cap: int,
    prefix: torch.Tensor | None = None,
    pad_id: int = PAD_ID,
) -> torch.Tensor:
    """Per-sentence target limit ``min(a * src_len + b, cap)`` (tokens before EOS), and at
    least the length of the sentence's target prefix.

    ``src_len`` counts the real source tokens (those that are not ``pad_id``) without EOS;
    ``cap`` is the longest target the model's position table allows; ``prefix``:
    ``(batch, prefix_len)`` (:func:`prefix_tensor`). Returns ``(batch,)`` int64.
    """
    src_len = (src != pad_id).sum(1) - 1
    limits = ((src_len.float() * a).long() + b).clamp(max=cap)
    if prefix is not None:
        limits = torch.maximum(limits, (prefix >= 0).sum(1))
    return limits


def prefix_tensor(prefixes: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor | None:
    """Target prefixes as ``(batch, longest)`` int64, right-padded with -1 (no forcing);
    ``None`` when all are empty (nothing to force)."""
    width = max((len(p) for p in prefixes), default=0)
    if width == 0:
        return None
    out = torch.full((len(prefixes), width), -1, dtype=torch.long)
    for row, p in enumerate(prefixes):
        out[row, : len(p)] = torch.tensor(p, dtype=torch.long)
    return out.to(device)


def force_tokens(logp: torch.Tensor, tokens: torch.Tensor) -> None:
    """Teacher-force ``tokens`` ``(rows,)`` (-1 = leave the row free) in ``logp``
    ``(rows, vocab)``, in place: a forced row keeps only its token's own log-probability, so
    the hypothesis' score stays its log-probability under the model."""
    rows = (tokens >= 0).nonzero()[:, 0]
    if rows.numel() == 0:
        return
    keep = logp[rows, tokens[rows]]
    logp[rows] = float("-inf")
    logp[rows, tokens[rows]] = keep


# Picks the next token of each row from its log-probabilities: (logp (rows, vocab), sentence
# index of each row (rows,), step) -> (rows,) int64. Greedy search takes the argmax.
Chooser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@torch.inference_mode()
def greedy_search(
    model: Decoder,
    src: torch.Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    prefix: torch.Tensor | None = None,
    choose: Chooser | None = None,
    vocab_ids: torch.Tensor | None = None,
) -> list[Hypothesis]:
    """Pick the most probable token at each step (or the one ``choose`` picks).

    Args:
        src: ``(batch, src_len)`` int64 source ids ending in EOS, right-padded.
        prefix: ``(batch, prefix_len)`` target prefixes to teacher-force (:func:`prefix_tensor`).
        choose: picks each row's token instead of the argmax (:mod:`nmt.decode.sampling`);
            it gets and returns columns of the log-probabilities (:class:`OutputVocab`).
        vocab_ids: ``(n,)`` sorted target ids to search over (a vocabulary shortlist,
            including the special tokens and every prefix id); ``None`` = all.

    Returns:
        One :class:`Hypothesis` per sentence, in batch order (``normalized`` = ``score``, the
        model's log-probability of the output and EOS); :func:`no_output` for a sentence
        that never chose EOS.
    """
    memory, src_mask = model.encode(src)
    cache = init_cache(model, memory, src_mask, vocab_ids)
    cfg, out = model.cfg, OutputVocab.of(vocab_ids, model.cfg)
    limits = max_lengths(src, max_len_a, max_len_b, cfg.max_positions - 1, prefix, cfg.pad_id)
    prefix = out.columns(prefix)
    batch = src.size(0)
    alive = torch.arange(batch, device=src.device)  # original sentence index of each row
    tokens = torch.full((batch,), cfg.bos_id, dtype=torch.long, device=src.device)
    history = torch.empty(batch, 0, dtype=torch.long, device=src.device)
    scores = torch.zeros(batch, device=src.device)
    results: list[Hypothesis | None] = [None] * batch
    shortest = int(limits.min())  # steps before it need no limit check
    for step in range(int(limits.max()) + 1):
        logp = mask_specials(model.decode_step(tokens, cache), out.pad, out.bos)
        if prefix is not None and step < prefix.size(1):
            force_tokens(logp, prefix[alive, step])
        if step >= shortest:
            forced = limits[alive] <= step
            logp[forced] = _only_eos(logp[forced], out.eos)
        if choose is None:
            best_logp, tokens = logp.max(-1)
        else:
            tokens = choose(logp, alive, step)
            best_logp = logp.gather(1, tokens[:, None])[:, 0]
        tokens = out.tokens(tokens)
        scores = scores + best_logp
        history = torch.cat([history, tokens[:, None]], 1)
        done = tokens == cfg.eos_id
        if done.any():
            for row in done.nonzero()[:, 0].tolist():
                score = float(scores[row])
                results[int(alive[row])] = Hypothesis(history[row, :-1].tolist(), score, score)
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            alive, tokens, history, scores = alive[keep], tokens[keep], history[keep], scores[keep]
            shortest = int(limits[alive].min())
            cache.reorder(keep)
    return [no_output() if r is None else r for r in results]


def init_cache(
    model: Decoder, memory: Any, src_mask: torch.Tensor, vocab_ids: torch.Tensor | None
) -> Any:
    """``model.init_cache``; with the output ids ``vocab_ids`` of a shortlist, called with
    them (``init_cache(..., vocab_ids=...)``, which :class:`~nmt.model.transformer.Transformer`
    and :class:`~nmt.decode.ensemble.Ensemble` take; a :class:`Decoder` need not)."""
    if vocab_ids is None:
        return model.init_cache(memory, src_mask)
    return cast(Any, model).init_cache(memory, src_mask, vocab_ids=vocab_ids)


def mask_specials(logp: torch.Tensor, pad_id: int = PAD_ID, bos_id: int = BOS_ID) -> torch.Tensor:
    """Forbid PAD and BOS as outputs (in place; ``(rows, vocab)`` log-probabilities): they
    never occur as targets, and an untrained model would otherwise emit them (fairseq does
    the same; Hugging Face's OPUS-MT models list PAD in ``bad_words_ids``)."""
    logp.select(1, pad_id).fill_(float("-inf"))  # (cheaper than indexing's logp[:, pad_id])
    logp.select(1, bos_id).fill_(float("-inf"))
    return logp


def _only_eos(logp: torch.Tensor, eos_id: int = EOS_ID) -> torch.Tensor:
    """Rows ``(rows, vocab)`` that reached their length limit may only end, with the model's
    own EOS log-probability: a hypothesis cut there scores what the model gives it (its
    forced-decoding score), not a free EOS (log 1 = 0) that would favour it in ranking."""
    forced = torch.full_like(logp, float("-inf"))
    forced[:, eos_id] = logp[:, eos_id]
    return forced


@dataclass
class BeamState:
    """The live part of a beam search.

    Attributes:
        sentence: ``(n,)`` original index of each live sentence.
        scores: ``(n, width)`` cumulative log-probabilities of the live hypotheses; ``width``
            is 1 before the first step (every beam would start from the same BOS) and
            ``beam_size`` after it.
        history: ``(n * width, step)`` tokens decoded so far.
        limits: ``(n,)`` maximum target length of each live sentence.
        n_finished: ``(n,)`` finished hypotheses of each live sentence.
        cache: decoder cache with ``n * width`` rows.
        prefix: ``(n, prefix_len)`` target prefixes to teacher-force (:func:`prefix_tensor`).
        shortest: ``min(limits)``, kept in Python so that steps before it skip the limit
            check (a tensor comparison and a read back).
        out: the target ids the log-probabilities' columns stand for (``prefix`` holds
            columns; ``history`` ids); ``None`` = the whole vocabulary.
    """

    sentence: torch.Tensor
    scores: torch.Tensor
    history: torch.Tensor
    limits: torch.Tensor
    n_finished: torch.Tensor
    cache: Cache
    prefix: torch.Tensor | None = None
    shortest: int = 0
    out: OutputVocab | None = None

    def __post_init__(self) -> None:
        self.shortest = int(self.limits.min()) if self.limits.numel() else 0


def beam_init(
    model: Decoder,
    src: torch.Tensor,
    max_len_a: float,
    max_len_b: int,
    prefix: torch.Tensor | None = None,
    vocab_ids: torch.Tensor | None = None,
) -> BeamState:
    """Encode once; the first step runs one decoder row per sentence (as CTranslate2 does),
    since all beams would start from the same BOS; :func:`beam_step` then widens to the beam.
    While a sentence's ``prefix`` lasts, its beams are teacher-forced (one live hypothesis).
    ``vocab_ids``: see :func:`greedy_search`."""
    batch, cfg, out = src.size(0), model.cfg, OutputVocab.of(vocab_ids, model.cfg)
    memory, src_mask = model.encode(src)
    return BeamState(
        sentence=torch.arange(batch, device=src.device),
        scores=torch.zeros(batch, 1, device=src.device),
        history=torch.empty(batch, 0, dtype=torch.long, device=src.device),
        limits=max_lengths(src, max_len_a, max_len_b, cfg.max_positions - 1, prefix, cfg.pad_id),
        n_finished=torch.zeros(batch, dtype=torch.long, device=src.device),
        cache=init_cache(model, memory, src_mask, vocab_ids),
        prefix=out.columns(prefix),
        out=out,
    )


def beam_step(
    model: Decoder,
    state: BeamState,
    finished: list[list[Hypothesis]],
    beam_size: int,
    alpha: float,
) -> BeamState | None:
    """Advance every live sentence by one token; return ``None`` when all are done.

    Appends the hypotheses that end here to ``finished[sentence]``.
    """
    (n, width), step, cfg = state.scores.shape, state.history.size(1), model.cfg
    last = (
        state.history[:, -1]
        if step
        else torch.full((n,), cfg.bos_id, dtype=torch.long, device=state.scores.device)
    )
    out = state.out or OutputVocab.of(None, cfg)
    logp = mask_specials(model.decode_step(last, state.cache), out.pad, out.bos)
    if state.prefix is not None and step < state.prefix.size(1):
        force_tokens(logp, state.prefix[:, step].repeat_interleave(width))
    logp = logp.view(n, width, -1)
    vocab = logp.size(-1)  # columns: the whole vocabulary or a shortlist's ids
    forced = state.limits <= step if step >= state.shortest else None
    if forced is not None:
        logp[forced] = _only_eos(logp[forced].view(-1, vocab), out.eos).view(-1, width, vocab)
    candidates = logp.add_(state.scores[:, :, None]).view(n, -1)  # (n, width * vocab)
    n_cand = min(2 * beam_size, width * vocab)
    cand_scores, cand_index = candidates.topk(n_cand, dim=1)  # (n, 2 * beam)
    cand_beam, cand_token = cand_index // vocab, out.tokens(cand_index % vocab)
    is_eos = cand_token == cfg.eos_id
    some_full = _finalize(state, finished, cand_scores, cand_beam, is_eos, beam_size, alpha)
    # The best `beam` candidates that do not end: candidates are sorted, so topk over the
    # EOS-masked scores keeps them in order.
    next_scores, pick = cand_scores.masked_fill(is_eos, float("-inf")).topk(
        min(beam_size, n_cand), dim=1
    )
    next_width = next_scores.size(1)
    next_beam, next_token = cand_beam.gather(1, pick), cand_token.gather(1, pick)
    base = torch.arange(0, n * width, width, device=pick.device)[:, None]
    rows = (base + next_beam).view(-1)  # (n * next_width) source row of each new hypothesis
    history = torch.cat([state.history[rows], next_token.view(-1, 1)], 1)
    state.scores, state.history = next_scores, history
    if some_full or forced is not None:  # some sentences may be done
        done = state.n_finished >= beam_size
        if forced is not None:
            done |= forced
        keep = (~done).nonzero()[:, 0]
        if keep.numel() == 0:
            return None
        if keep.numel() < n:
            rows = _prune(state, keep, rows)
    state.cache.reorder(rows, next_width)
    return state


def _prune(state: BeamState, keep: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Keep sentences ``keep`` ``(n_kept,)`` of ``state`` (already advanced: ``scores``
    ``(n, width)``, ``history`` ``(n * width, step)``); return the entries of ``rows``
    ``(n * width,)``, the cache row of each hypothesis, that belong to them."""
    width = state.scores.size(1)
    offsets = torch.arange(width, device=keep.device)
    keep_rows = (keep[:, None] * width + offsets).view(-1)
    state.scores, state.history = state.scores[keep], state.history[keep_rows]
    state.sentence, state.limits = state.sentence[keep], state.limits[keep]
    state.n_finished, state.shortest = state.n_finished[keep], int(state.limits.min())
    if state.prefix is not None:
        state.prefix = state.prefix[keep]
    return rows[keep_rows]


def _finalize(
    state: BeamState,
    finished: list[list[Hypothesis]],
    cand_scores: torch.Tensor,
    cand_beam: torch.Tensor,
    is_eos: torch.Tensor,
    beam_size: int,
    alpha: float,
) -> bool:
    """Record hypotheses that end with EOS among each sentence's top ``beam`` candidates;
    return whether some sentence now has ``beam_size`` finished hypotheses."""
    ending = is_eos[:, :beam_size] & (cand_scores[:, :beam_size] > float("-inf"))
    if not bool(ending.any()):
        return False
    width = state.scores.size(1)
    length = state.history.size(1) + 1  # tokens including EOS
    penalty = length_penalty(length, alpha)
    some_full = False
    for i, j in ending.nonzero().tolist():
        sentence = int(state.sentence[i])
        if len(finished[sentence]) >= beam_size:
            continue
        row = i * width + int(cand_beam[i, j])
        score = float(cand_scores[i, j])
        finished[sentence].append(Hypothesis(state.history[row].tolist(), score, score / penalty))
        state.n_finished[i] += 1
        some_full |= len(finished[sentence]) >= beam_size
    return some_full


@torch.inference_mode()
def beam_search(
    model: Decoder,
    src: torch.Tensor,
    beam_size: int = 5,
    length_penalty_alpha: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    nbest: int = 1,
    prefix: torch.Tensor | None = None,
    vocab_ids: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search (Sutskever et al. 2014; fairseq's 2×beam candidate scheme).

    Args:
        src: ``(batch, src_len)`` int64 source ids ending in EOS, right-padded.
        beam_size: hypotheses kept per sentence; 1 gives the same result as greedy search.
        length_penalty_alpha: GNMT alpha; 0 ranks finished hypotheses by log-probability.
        nbest: hypotheses returned per sentence (at most ``beam_size``).
        prefix: ``(batch, prefix_len)`` target prefixes to teacher-force (:func:`prefix_tensor`);
            the search continues from each, and scores include the prefix's log-probability.
        vocab_ids: see :func:`greedy_search`.

    Returns:
        For each sentence (batch order), its ``nbest`` best hypotheses, best first; for a
        sentence none of whose hypotheses reached EOS, :func:`no_output` alone.
    """
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    state: BeamState | None = beam_init(model, src, max_len_a, max_len_b, prefix, vocab_ids)
    while state is not None:
        state = beam_step(model, state, finished, beam_size, length_penalty_alpha)
    return [sorted(f, key=lambda h: -h.normalized)[:nbest] or [no_output()] for f in finished]
