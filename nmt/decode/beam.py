"""Batched beam search over the incremental decoder (Sutskever et al. 2014).

Beam search is batched over ``(sentences × beam)`` rows and built from small steps: expand
(top 2×beam candidates, so that end-of-sentence picks never shrink the beam; fairseq),
finalize (hypotheses ending in EOS among the top ``beam`` candidates), select (the best
``beam`` continuing candidates) and prune (sentences with ``beam`` finished hypotheses leave
the batch, and their cache rows are dropped). Finished hypotheses are ranked by
``log P / lp(len)`` with the GNMT length penalty ``lp = ((5 + len) / 6) ** alpha``
(Wu et al. 2016, eq. 14), ``len`` counting the EOS token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.decode.search import (
    Cache,
    Decoder,
    Hypothesis,
    force_tokens,
    init_cache,
    length_penalty,
    mask_specials,
    max_lengths,
    no_output,
    only_eos,
)
from nmt.decode.shortlist import OutputVocab


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
        logp[forced] = only_eos(logp[forced].view(-1, vocab), out.eos).view(-1, width, vocab)
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
