"""The incremental-decoding state of a :class:`nmt.model.transformer.Transformer`'s decoder: the
self-attention keys/values of the decoded prefix and the cross-attention keys/values projected
once per sentence, reordered as search keeps, moves and drops hypotheses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

CACHE_CHUNK = 16  # self-attention cache grows by this many positions at a time


@dataclass
class LayerCache:
    """Keys and values one decoder layer has seen, for incremental decoding.

    Attributes:
        cross_k / cross_v: ``(sentences, n_heads, src_len, head_dim)``, projected once from the
            encoder output and shared by all beams of a sentence.
        self_k / self_v: ``(rows, n_heads, capacity, head_dim)`` with ``rows = sentences *
            beam``; positions ``[0, length)`` hold the decoded prefix. Capacity grows in
            chunks of ``CACHE_CHUNK`` so that a step writes in place instead of re-copying
            the prefix.
        length: decoded positions stored.
    """

    cross_k: torch.Tensor
    cross_v: torch.Tensor
    self_k: torch.Tensor | None = None
    self_v: torch.Tensor | None = None
    length: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one step's ``(rows, n_heads, 1, head_dim)`` key/value; return the prefix."""
        if self.self_k is None or self.self_v is None or self.length == self.self_k.size(2):
            grow = k.new_zeros(k.size(0), k.size(1), CACHE_CHUNK, k.size(3))
            if self.self_k is None or self.self_v is None:
                self.self_k, self.self_v = grow, grow.clone()
            else:
                self.self_k = torch.cat([self.self_k, grow], 2)
                self.self_v = torch.cat([self.self_v, grow], 2)
        self.self_k[:, :, self.length] = k[:, :, 0]
        self.self_v[:, :, self.length] = v[:, :, 0]
        self.length += 1
        return self.self_k[:, :, : self.length], self.self_v[:, :, : self.length]

    def reorder_rows(self, index: torch.Tensor) -> None:
        """Keep self-attention rows ``index`` (``(new_rows,)`` int64), in that order."""
        if self.self_k is not None and self.self_v is not None:
            self.self_k = self.self_k.index_select(0, index)
            self.self_v = self.self_v.index_select(0, index)

    def select_sentences(self, index: torch.Tensor) -> None:
        """Keep the cross-attention keys/values of sentences ``index``."""
        self.cross_k = self.cross_k.index_select(0, index)
        self.cross_v = self.cross_v.index_select(0, index)


@dataclass
class DecoderCache:
    """The incremental-decoding state of the whole decoder.

    Attributes:
        layers: one :class:`LayerCache` per decoder layer.
        src_mask: ``(sentences, 1, 1, src_len)`` bool, True where the source is a real token.
        attn_mask: ``src_mask`` as the additive mask SDPA reads, ``(sentences, 1, 1,
            src_len)`` in the keys' dtype, 0 for real tokens and -inf for padding: made once
            here instead of by SDPA at every step and layer (the same numbers).
        rows_per_sentence: decoder rows of each sentence (1 for greedy search and for the
            first step of beam search, then ``beam_size``); a sentence's rows are adjacent.
        step: target positions decoded so far.
        output: the output projection of this search, ``(rows, d_model)`` → ``(rows, n)``
            logits, when it covers a subset of ``n`` target ids (a vocabulary shortlist,
            :meth:`nmt.model.transformer.Transformer.output_rows`); ``None`` = the whole
            vocabulary.
    """

    layers: list[LayerCache]
    src_mask: torch.Tensor
    rows_per_sentence: int = 1
    step: int = 0
    output: Callable[[torch.Tensor], torch.Tensor] | None = None
    attn_mask: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        dtype = self.layers[0].cross_k.dtype if self.layers else torch.float32
        blank = torch.zeros(self.src_mask.shape, dtype=dtype, device=self.src_mask.device)
        self.attn_mask = blank.masked_fill_(~self.src_mask, float("-inf"))

    @property
    def rows(self) -> int:
        """Current number of decoder rows (``sentences * rows_per_sentence``)."""
        return self.src_mask.size(0) * self.rows_per_sentence

    def reorder(self, index: torch.Tensor, rows_per_sentence: int | None = None) -> None:
        """Keep decoder rows ``index`` (``(new_rows,)`` int64), in that order.

        Args:
            index: the old row of each new row.
            rows_per_sentence: rows of each sentence after the reorder (default: unchanged);
                beam search goes from 1 to ``beam_size`` after its first step.

        With more than one row per sentence (before or after), the rows of one sentence must
        stay together, in sentence order, as beam search keeps them: then an index that keeps
        the number of sentences only moves hypotheses between the beams of each sentence, so
        the per-sentence cross-attention state is left alone, and a shorter one drops whole
        sentences (finished ones) and their state. With one row per sentence before and
        after, ``index`` may select rows in any order.
        """
        width = rows_per_sentence or self.rows_per_sentence
        for layer in self.layers:
            layer.reorder_rows(index)
        one_row_each = self.rows_per_sentence == 1 and width == 1
        if one_row_each or index.numel() // width != self.src_mask.size(0):
            sentences = index[::width] // self.rows_per_sentence
            for layer in self.layers:
                layer.select_sentences(sentences)
            self.src_mask = self.src_mask.index_select(0, sentences)
            self.attn_mask = self.attn_mask.index_select(0, sentences)
        self.rows_per_sentence = width
