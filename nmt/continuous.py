"""Beam search that new sentences join while it runs (iteration-level batching).

A server that searches fixed batches leaves its workers idle or half-full under a steady
stream of short requests: a batch runs as long as its longest sentence, nothing joins it
meanwhile, and requests that arrive during it wait for the next one. Here a running search
takes new sentences between two decoding steps, as Orca does for language models (Yu et al.
2022, "Orca: A Distributed Serving System for Transformer-Based Generative Models",
iteration-level scheduling), and each sentence leaves as soon as it is done.

New sentences are encoded together and appended to the running state, right-aligned: their
history and self-attention cache begin at a later column, the columns before are padding that
self-attention masks out (:meth:`nmt.cache.DecoderCache.merge`), and their source is padded to
the longest source in the search (cross-attention masks it). They take their first step with
the running sentences, in ``beam_size`` rows of which only the first counts (the others score
-inf, so the candidates are those of one row, as :func:`nmt.search.beam_init` starts). Length
limits and length penalties count each sentence's own tokens (``BeamState.start``). Once the
sentences that began at the first columns have left, those columns are dropped.

A sentence searched alone takes exactly the steps of :func:`nmt.search.beam_search`; in
company, its rows share larger matrix products, so its scores may differ in the last bits.
"""

from __future__ import annotations

import torch

from nmt.cache import DecoderCache
from nmt.data import pad
from nmt.model import Transformer
from nmt.search import (
    BeamState,
    Hypothesis,
    beam_init,
    beam_step,
    max_lengths,
    prefix_tensor,
)


class ContinuousBeamSearch:
    """A beam search over a changing set of sentences: :meth:`add` sentences at any time,
    :meth:`step` the search, and collect finished sentences from :meth:`done`.

    Args:
        model: the model (eval mode); its decoder cache is a :class:`DecoderCache`.
        beam_size / length_penalty / max_len_a / max_len_b / nbest: as
            :func:`nmt.search.beam_search` (``length_penalty`` is its GNMT alpha).

    Raises:
        ValueError: ``beam_size`` below 2 (greedy search does not merge states) or ``nbest``
            above it.
    """

    def __init__(
        self,
        model: Transformer,
        beam_size: int = 5,
        length_penalty: float = 1.0,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        nbest: int = 1,
    ):
        if beam_size < 2 or not 1 <= nbest <= beam_size:
            raise ValueError(f"beam_size={beam_size} must be at least 2, nbest={nbest} 1..beam")
        self.model, self.beam_size, self.alpha = model, beam_size, length_penalty
        self.max_len_a, self.max_len_b, self.nbest = max_len_a, max_len_b, nbest
        self.state: BeamState | None = None
        self.finished: dict[int, list[Hypothesis]] = {}
        self.src_tokens: dict[int, int] = {}  # live sentence -> source tokens (EOS counted)
        self.next_id = 0
        self._done: list[tuple[int, list[Hypothesis]]] = []

    @property
    def live(self) -> int:
        """Sentences still searched."""
        return len(self.src_tokens)

    @property
    def live_tokens(self) -> int:
        """Source tokens (EOS counted) of the sentences still searched."""
        return sum(self.src_tokens.values())

    @torch.inference_mode()
    def add(self, sources: list[list[int]], prefixes: list[list[int]] | None = None) -> list[int]:
        """Start searching ``sources`` (non-empty source ids without EOS): encode them and
        join them to the running search (their first step is its next one); the first
        sentences of a search take their first step here, as :func:`beam_search` does.

        Args:
            prefixes: each source's target prefix ids to teacher-force (``[]`` = none).

        Returns:
            The id of each sentence (what :meth:`done` reports it under).
        """
        if not sources or any(not s for s in sources):
            raise ValueError("add() takes a non-empty list of non-empty sources")
        cfg = self.model.cfg
        device = next(self.model.parameters()).device
        src = pad(sources, suffix=cfg.eos_id, pad_id=cfg.pad_id).to(device)
        ids = list(range(self.next_id, self.next_id + len(sources)))
        self.next_id += len(sources)
        for i, s in zip(ids, sources):
            self.finished[i] = []
            self.src_tokens[i] = len(s) + 1
        prefix = None if prefixes is None else prefix_tensor(prefixes, device)
        if self.state is None:  # the first sentences: as beam_search() starts
            new = beam_init(self.model, src, self.max_len_a, self.max_len_b, prefix)
            new.sentence = torch.tensor(ids, device=device)
            self.state = beam_step(self.model, new, self.finished, self.beam_size, self.alpha)
        else:  # joining: the first step is the running search's next one
            self.state = merge(self.state, self.joiners(src, ids, prefix), cfg.bos_id)
        self._collect()
        return ids

    def joiners(self, src: torch.Tensor, ids: list[int], prefix: torch.Tensor | None) -> BeamState:
        """The state of new sentences before their first step, ``beam_size`` rows each: the
        first row holds the hypothesis (score 0), the others score -inf, so the step's
        candidates are the first row's, as if it were one row (:func:`beam_init`)."""
        beam, device = self.beam_size, src.device
        memory, src_mask = self.model.encode(src)
        n = src.size(0)
        scores = torch.full((n, beam), float("-inf"), device=device)
        scores[:, 0] = 0.0
        return BeamState(
            sentence=torch.tensor(ids, device=device),
            scores=scores,
            history=torch.empty(n * beam, 0, dtype=torch.long, device=device),
            limits=max_lengths(
                src,
                self.max_len_a,
                self.max_len_b,
                self.model.cfg.max_positions - 1,
                prefix,
                self.model.cfg.pad_id,
            ),  # fmt: skip
            n_finished=torch.zeros(n, dtype=torch.long, device=device),
            cache=self.model.init_cache(memory, src_mask, rows_per_sentence=beam),
            prefix=prefix,
        )

    @torch.inference_mode()
    def step(self) -> None:
        """Advance every live sentence by one token (nothing when none is live)."""
        if self.state is None:
            return
        state = beam_step(self.model, self.state, self.finished, self.beam_size, self.alpha)
        if state is not None:
            trim(state)
        self.state = state
        self._collect()

    def done(self) -> list[tuple[int, list[Hypothesis]]]:
        """The sentences finished since the last call: ``(id, its nbest hypotheses, best
        first)``, ranked by length-normalised score as :func:`nmt.search.beam_search` ranks."""
        out, self._done = self._done, []
        return out

    def _collect(self) -> None:
        live = set() if self.state is None else set(self.state.sentence.tolist())
        for i in [i for i in self.src_tokens if i not in live]:
            del self.src_tokens[i]
            hyps = sorted(self.finished.pop(i), key=lambda h: -h.normalized)[: self.nbest]
            self._done.append((i, hyps))


def merge(running: BeamState, new: BeamState, bos_id: int) -> BeamState:
    """``new`` appended to ``running`` (past its first step; ``new`` at most as far, possibly
    before its first), right-aligned so that both take the next step together (module
    docstring); target prefixes move with their sentences' columns. A sentence that has not
    taken a step reads ``bos_id`` as its last token (in a padding column).

    Raises:
        ValueError: states of different beam widths.
    """
    width, step, new_step = running.scores.size(1), running.history.size(1), new.history.size(1)
    if new.scores.size(1) != width:
        raise ValueError(f"beam states of widths {width} and {new.scores.size(1)} do not merge")
    assert isinstance(running.cache, DecoderCache) and isinstance(new.cache, DecoderCache)
    offset = step - new_step
    device = running.scores.device

    def starts(state: BeamState) -> torch.Tensor:
        if state.start is not None:
            return state.start
        return torch.zeros(state.scores.size(0), dtype=torch.long, device=device)

    padding = new.history.new_zeros((new.history.size(0), offset))  # never read, but:
    if new_step == 0:
        padding[:, -1] = bos_id  # the token that the next step reads
    running.cache.merge(new.cache)
    return BeamState(
        sentence=torch.cat([running.sentence, new.sentence]),
        scores=torch.cat([running.scores, new.scores]),
        history=torch.cat([running.history, torch.cat([padding, new.history], 1)]),
        limits=torch.cat([running.limits, new.limits + offset]),
        n_finished=torch.cat([running.n_finished, new.n_finished]),
        cache=running.cache,
        prefix=_merge_prefixes(running, new, offset),
        start=torch.cat([starts(running), starts(new) + offset]),
    )


def _merge_prefixes(running: BeamState, new: BeamState, offset: int) -> torch.Tensor | None:
    """Target prefixes by ``history`` column (-1 = free), ``new``'s shifted by ``offset``
    columns, as ``beam_step`` reads them at its step; ``None`` when neither has any."""
    if running.prefix is None and new.prefix is None:
        return None
    device = running.scores.device

    def columns(state: BeamState, shift: int) -> torch.Tensor:
        rows = state.scores.size(0)
        if state.prefix is None:
            return torch.full((rows, shift), -1, dtype=torch.long, device=device)
        return torch.cat([state.prefix.new_full((rows, shift), -1), state.prefix], 1)

    a, b = columns(running, 0), columns(new, offset)
    width = max(a.size(1), b.size(1))
    a = torch.cat([a, a.new_full((a.size(0), width - a.size(1)), -1)], 1)
    b = torch.cat([b, b.new_full((b.size(0), width - b.size(1)), -1)], 1)
    return torch.cat([a, b])


def trim(state: BeamState) -> None:
    """Drop the leading history and cache columns that no live sentence uses any more."""
    cache = state.cache
    assert isinstance(cache, DecoderCache)
    columns = cache.trim()
    if state.start is None:
        return
    if columns:
        state.history = state.history[:, columns:]
        if state.prefix is not None:
            state.prefix = state.prefix[:, columns:]
        state.start = state.start - columns
        state.limits = state.limits - columns
        state.shortest -= columns
    if cache.start is None:
        state.start = None
