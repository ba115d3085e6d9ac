"""The incremental-decoding state of a :class:`nmt.model.Transformer`'s decoder: the
self-attention keys/values of the decoded prefix and the cross-attention keys/values projected
once per sentence, reordered as search keeps, moves and drops hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CACHE_CHUNK = 16  # self-attention cache grows by this many positions at a time


@dataclass
class LayerCache:
    """Cross-attention keys and values of one decoder layer, for incremental decoding.

    Attributes:
        cross_k / cross_v: ``(sentences, n_heads, src_len, head_dim)``, projected once from the
            encoder output and shared by all beams of a sentence.
    """

    cross_k: torch.Tensor
    cross_v: torch.Tensor

    def select_sentences(self, index: torch.Tensor) -> None:
        """Keep the cross-attention keys/values of sentences ``index``."""
        self.cross_k = self.cross_k.index_select(0, index)
        self.cross_v = self.cross_v.index_select(0, index)


@dataclass
class SelfAttentionCache:
    """The self-attention keys and values of all decoder layers, in one buffer: a step
    appends a layer's key and value with one copy, and a reorder is one row gather (not two
    per layer).

    Attributes:
        n_layers: decoder layers.
        kv: ``(rows, n_layers, 2, n_heads, capacity, head_dim)``, keys then values; positions
            ``[0, step)`` hold the decoded prefix. Capacity grows in chunks of ``CACHE_CHUNK``
            so that a step writes in place instead of re-copying the prefix.
    """

    n_layers: int
    kv: torch.Tensor | None = None

    def append(
        self, layer: int, position: int, kv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``layer``'s key and value ``(rows, 2, n_heads, head_dim)`` at ``position``;
        return its keys and values ``(rows, n_heads, position + 1, head_dim)`` so far."""
        if self.kv is None or position == self.kv.size(4):
            self.grow(kv)
        assert self.kv is not None
        self.kv[:, layer, :, :, position].copy_(kv)
        prefix = self.kv[:, layer, :, :, : position + 1]
        return prefix[:, 0], prefix[:, 1]

    def grow(self, like: torch.Tensor) -> None:
        """Room for ``CACHE_CHUNK`` more positions of rows shaped as ``like``."""
        rows, _, heads, head_dim = like.shape
        capacity = 0 if self.kv is None else self.kv.size(4)
        shape = (rows, self.n_layers, 2, heads, capacity + CACHE_CHUNK, head_dim)
        grown = like.new_zeros(shape)
        if self.kv is not None:
            grown[..., :capacity, :] = self.kv
        self.kv = grown

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (``(new_rows,)`` int64), in that order."""
        if self.kv is not None:
            self.kv = self.kv.index_select(0, index)


@dataclass
class DecoderCache:
    """The incremental-decoding state of the whole decoder.

    Attributes:
        layers: one :class:`LayerCache` per decoder layer (cross-attention).
        src_mask: ``(sentences, 1, 1, src_len)`` bool, True where the source is a real token.
        attn_mask: ``src_mask`` as the additive mask SDPA reads, ``(sentences, 1, 1,
            src_len)`` in the keys' dtype, 0 for real tokens and -inf for padding: made once
            here instead of by SDPA at every step and layer (the same numbers).
        rows_per_sentence: decoder rows of each sentence (1 for greedy search and for the
            first step of beam search, then ``beam_size``); a sentence's rows are adjacent.
        step: target positions decoded so far.
        self_attention: the decoded prefix's keys and values (:class:`SelfAttentionCache`).
    """

    layers: list[LayerCache]
    src_mask: torch.Tensor
    rows_per_sentence: int = 1
    step: int = 0
    attn_mask: torch.Tensor = field(init=False)
    self_attention: SelfAttentionCache = field(init=False)

    def __post_init__(self) -> None:
        dtype = self.layers[0].cross_k.dtype if self.layers else torch.float32
        blank = torch.zeros(self.src_mask.shape, dtype=dtype, device=self.src_mask.device)
        self.attn_mask = blank.masked_fill_(~self.src_mask, float("-inf"))
        self.self_attention = SelfAttentionCache(len(self.layers))

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
        self.self_attention.reorder(index)
        one_row_each = self.rows_per_sentence == 1 and width == 1
        if one_row_each or index.numel() // width != self.src_mask.size(0):
            sentences = index[::width] // self.rows_per_sentence
            for layer in self.layers:
                layer.select_sentences(sentences)
            self.src_mask = self.src_mask.index_select(0, sentences)
            self.attn_mask = self.attn_mask.index_select(0, sentences)
        self.rows_per_sentence = width
