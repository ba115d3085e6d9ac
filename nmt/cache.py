"""The incremental-decoding state of a :class:`nmt.model.Transformer`'s decoder: the
self-attention keys/values of the decoded prefix and the cross-attention keys/values projected
once per sentence, reordered as search keeps, moves and drops hypotheses.

A cache may also hold sentences that started decoding at different steps
(:mod:`nmt.continuous`, where new sentences join a running beam search): each row's prefix
is then right-aligned, starting at its own column ``start``, and the columns before it are
masked out of self-attention (left padding, as Hugging Face's batched generation pads).
"""

from __future__ import annotations

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

    def merge(self, other: LayerCache, offset: int, rows: int) -> None:
        """Append ``other``'s ``rows`` rows and its sentences; its prefix goes to columns
        ``[offset, offset + other.length)``, which must end where this cache's prefix ends
        (an empty prefix: the new rows' columns are all padding)."""
        if self.self_k is None or self.self_v is None:
            raise ValueError("merge into a cache after its first step")
        assert offset + other.length == self.length, "prefixes must end at the same column"
        self.cross_k = _cat_padded(self.cross_k, other.cross_k, 2, 0.0)
        self.cross_v = _cat_padded(self.cross_v, other.cross_v, 2, 0.0)
        shape = (rows, *self.self_k.shape[1:])
        new_k, new_v = self.self_k.new_zeros(shape), self.self_v.new_zeros(shape)
        if other.self_k is not None and other.self_v is not None and other.length:
            new_k[:, :, offset : self.length] = other.self_k[:, :, : other.length]
            new_v[:, :, offset : self.length] = other.self_v[:, :, : other.length]
        self.self_k = torch.cat([self.self_k, new_k], 0)
        self.self_v = torch.cat([self.self_v, new_v], 0)

    def trim(self, columns: int) -> None:
        """Drop the first ``columns`` prefix columns (padding no row reads any more)."""
        if self.self_k is not None and self.self_v is not None:
            self.self_k = self.self_k[:, :, columns:]
            self.self_v = self.self_v[:, :, columns:]
        self.length -= columns


def _cat_padded(a: torch.Tensor, b: torch.Tensor, dim: int, value: float | bool) -> torch.Tensor:
    """``a`` and ``b`` concatenated along dimension 0, the shorter one first padded with
    ``value`` at the end of dimension ``dim`` (e.g. source positions)."""
    width = max(a.size(dim), b.size(dim))

    def padded(t: torch.Tensor) -> torch.Tensor:
        if t.size(dim) == width:
            return t
        shape = list(t.shape)
        shape[dim] = width - t.size(dim)
        return torch.cat([t, t.new_full(shape, value)], dim)

    return torch.cat([padded(a), padded(b)], 0)


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
        step: target positions decoded so far (columns of the self-attention prefix).
        start: ``(rows,)`` int64, the column where each row's prefix begins, when rows
            started at different steps (:meth:`merge`); ``None`` when all begin at column 0.
            Row ``r`` is then at position ``step - start[r]``.
    """

    layers: list[LayerCache]
    src_mask: torch.Tensor
    rows_per_sentence: int = 1
    step: int = 0
    start: torch.Tensor | None = None
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
        if self.start is not None:
            self.start = self.start.index_select(0, index)
        one_row_each = self.rows_per_sentence == 1 and width == 1
        if one_row_each or index.numel() // width != self.src_mask.size(0):
            sentences = index[::width] // self.rows_per_sentence
            for layer in self.layers:
                layer.select_sentences(sentences)
            self.src_mask = self.src_mask.index_select(0, sentences)
            self.attn_mask = self.attn_mask.index_select(0, sentences)
        self.rows_per_sentence = width

    def self_mask(self) -> torch.Tensor | None:
        """The additive self-attention mask of the next step, ``(rows, 1, 1, step + 1)`` in
        the keys' dtype (-inf on each row's padding columns before its ``start``); ``None``
        when every row begins at column 0."""
        if self.start is None:
            return None
        columns = torch.arange(self.step + 1, device=self.start.device)
        padding = (columns[None, :] < self.start[:, None])[:, None, None, :]
        blank = torch.zeros(padding.shape, dtype=self.attn_mask.dtype, device=padding.device)
        return blank.masked_fill_(padding, float("-inf"))

    def merge(self, other: DecoderCache) -> None:
        """Append the rows and sentences of ``other`` (same ``rows_per_sentence``, at most as
        many decoded positions, possibly none) after this cache's (past its first step),
        right-aligned: its prefixes end where this cache's end, so both take the next step
        together. Sources of different lengths are padded to the longer (masked out of
        cross-attention).

        Raises:
            ValueError: other ``rows_per_sentence``, or ``other`` further than this cache.
        """
        if other.rows_per_sentence != self.rows_per_sentence or not 0 <= other.step <= self.step:
            raise ValueError(
                f"cannot merge a cache at step {other.step} with {other.rows_per_sentence} rows "
                f"per sentence into one at step {self.step} with {self.rows_per_sentence}"
            )
        offset = self.step - other.step
        for layer, new in zip(self.layers, other.layers):
            layer.merge(new, offset, other.rows)
        device = self.src_mask.device

        def starts(cache: DecoderCache) -> torch.Tensor:
            if cache.start is not None:
                return cache.start
            return torch.zeros(cache.rows, dtype=torch.long, device=device)

        self.start = torch.cat([starts(self), starts(other) + offset])
        self.src_mask = _cat_padded(self.src_mask, other.src_mask, 3, False)
        self.attn_mask = _cat_padded(self.attn_mask, other.attn_mask, 3, float("-inf"))

    def trim(self) -> int:
        """Drop the leading prefix columns that are padding in every row (after the rows
        that began there have left); ``start`` becomes ``None`` once all rows begin at
        column 0. Returns the columns dropped."""
        if self.start is None:
            return 0
        columns = int(self.start.min()) if self.start.numel() else 0
        if columns:
            for layer in self.layers:
                layer.trim(columns)
            self.step -= columns
            self.start = self.start - columns
        if not self.start.numel() or int(self.start.max()) == 0:
            self.start = None
        return columns
