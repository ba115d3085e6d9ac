"""Word alignment from the decoder's cross-attention (Garg et al. 2019, "Jointly Learning to
Align and Translate with Transformer Models").

Garg et al. found the attention of the penultimate decoder layer, averaged over its heads, the
one that aligns best in a model trained without alignment supervision. For a translation the
search found, :func:`nmt.decode.attention.cross_attention` runs the decoder teacher-forced over
the whole output (the same computation as the search's incremental steps, within float32
rounding) and returns that layer's attention, which is averaged over its heads;
:func:`word_alignment` sums it from SentencePiece pieces to the whitespace words of the input
line and of the output and links every target word to the source word it attends to most.
The attention row that *predicts* target piece ``j`` (the decoder position whose input is
piece ``j - 1``) aligns piece ``j``, as in fairseq's ``--print-alignment`` and Marian's
``--alignment``.

The output is the Pharaoh format of Moses and fast_align: ``i-j`` pairs, 0-based source word
``i`` and target word ``j``, one pair per target word, in target order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from nmt.data.targets import TaggedTokenizer
from nmt.data.tokenizer import Tokenizer
from nmt.errors import ConfigError

WORD_START = "\u2581"  # SentencePiece's "▁": the piece begins a whitespace word


def default_layer(n_layers: int) -> int:
    """The penultimate decoder layer (0-based), or the only one (Garg et al. 2019, §3)."""
    return max(0, n_layers - 2)


def check_layer(layer: int | None, n_layers: int) -> int:
    """``layer`` (``None`` = :func:`default_layer`) checked against the decoder's depth.

    Raises:
        ConfigError: ``layer`` is not in ``[0, n_layers)``.
    """
    if layer is None:
        return default_layer(n_layers)
    if not 0 <= layer < n_layers:
        raise ConfigError(
            f"alignment_layer={layer}: the model has {n_layers} decoder layers, choose 0 to "
            f"{n_layers - 1} (default: the penultimate, {default_layer(n_layers)})"
        )
    return layer


def piece_words(pieces: Sequence[str], n_words: int) -> list[int]:
    """The whitespace word (0-based) each SentencePiece piece belongs to.

    A piece that starts with ``▁`` starts a word; SentencePiece splits on whitespace, so the
    count of such pieces is the count of whitespace words. Where normalization made them differ
    (a character NFKC maps to a space, rare), indices are clamped to ``n_words - 1``.
    """
    words, word = [], -1
    for piece in pieces:
        if piece.startswith(WORD_START) or word < 0:
            word += 1
        words.append(min(word, n_words - 1))
    return words


def word_alignment(
    attention: torch.Tensor, src_words: list[int], tgt_words: list[int]
) -> list[tuple[int, int]]:
    """Hard word alignment from a piece-level attention matrix.

    Args:
        attention: ``(>= n_tgt_pieces, >= n_src_pieces)`` attention probabilities; rows and
            columns past the pieces (EOS, padding) are ignored.
        src_words / tgt_words: the word of each source / target piece (:func:`piece_words`).

    Returns:
        ``(source word, target word)`` pairs: every target word once, in order, linked to the
        source word whose pieces receive most of its pieces' attention.
    """
    n_src, n_tgt = max(src_words) + 1, max(tgt_words) + 1
    att = attention[: len(tgt_words), : len(src_words)].double()
    by_word = torch.zeros(n_tgt, n_src, dtype=torch.float64)
    tgt_index = torch.tensor(tgt_words)[:, None].expand(-1, len(src_words))
    src_index = torch.tensor(src_words)[None, :].expand(len(tgt_words), -1)
    by_word.index_put_((tgt_index, src_index), att, accumulate=True)
    return [(int(i), j) for j, i in enumerate(by_word.argmax(1).tolist())]


def line_alignment(
    tokenizer: Tokenizer,
    line: str,
    src_ids: Sequence[int],
    tgt_ids: Sequence[int],
    text: str,
    attention: torch.Tensor,
    tags: Collection[int] = (),
) -> list[tuple[int, int]]:
    """Word alignment of one translation: the whitespace words of ``line`` and of ``text``.

    Source pieces are read with the tokenizer's source side (a separate or Marian layout has
    two), target pieces with its target side. A target-language tag is no word, whichever
    way it came: neither the one the tokenizer puts before the line nor one written at the
    line's start (``>>fra<< Ein Hund``, ``<2en> Ein Hund``, with or without the same
    ``--tgt-lang``): source word 0 is the first word after it, and its attention is left out.

    Args:
        tokenizer: the tokenizer that encoded ``line`` into ``src_ids`` and decodes outputs.
        src_ids: the source as searched, without EOS (its tag first, if any:
            :func:`nmt.data.targets.checked_tags` leaves one).
        tags: the source ids of the model's target tags (``Targets.tags``); the tokenizer's
            own tag counts too.
        tgt_ids: the output ids, without BOS and EOS; ``text``: their detokenized text.
        attention: ``(>= len(tgt_ids), >= len(src_ids))`` head-averaged attention, a row
            per target piece and a column per source id (:func:`nmt.decode.attention.
            cross_attention`; the EOS row and column are ignored).

    Returns:
        :func:`word_alignment`'s pairs; ``[]`` when ``line`` or ``text`` has no word (an
        output of ``<unk>`` only detokenizes to nothing).
    """
    tag_ids = {*tags, *([tokenizer.tag_id] if isinstance(tokenizer, TaggedTokenizer) else [])}
    lead = tokenizer.n_tag_ids
    while lead < len(src_ids) and src_ids[lead] in tag_ids:
        lead += 1
    n_src, n_tgt = len(untagged(line, tokenizer, tag_ids).split()), len(text.split())
    if not n_src or not n_tgt or len(src_ids) <= lead or not tgt_ids:
        return []
    src_words = piece_words([tokenizer.source_piece(i) for i in src_ids[lead:]], n_src)
    tgt_words = piece_words([tokenizer.piece(i) for i in tgt_ids], n_tgt)
    return word_alignment(attention[:, lead:], src_words, tgt_words)


def untagged(line: str, tokenizer: Tokenizer, tag_ids: Collection[int]) -> str:
    """``line`` without the target tags written at its start (the pieces of ``tag_ids``)."""
    pieces = [tokenizer.source_piece(i) for i in tag_ids]
    rest = line.lstrip()
    while found := next((p for p in pieces if rest.startswith(p)), None):
        rest = rest[len(found) :].lstrip()
    return rest


def pharaoh(links: Sequence[tuple[int, int]]) -> str:
    """``i-j`` pairs separated by spaces (the Pharaoh format)."""
    return " ".join(f"{i}-{j}" for i, j in links)
