"""Greedy search over the incremental decoder, and what every search shares: hypotheses,
length limits and penalty, target prefixes, output constraints (beam search:
:mod:`nmt.decode.beam`).
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
            logp[forced] = only_eos(logp[forced], out.eos)
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


def only_eos(logp: torch.Tensor, eos_id: int = EOS_ID) -> torch.Tensor:
    """Rows ``(rows, vocab)`` that reached their length limit may only end, with the model's
    own EOS log-probability: a hypothesis cut there scores what the model gives it (its
    forced-decoding score), not a free EOS (log 1 = 0) that would favour it in ranking."""
    forced = torch.full_like(logp, float("-inf"))
    forced[:, eos_id] = logp[:, eos_id]
    return forced
