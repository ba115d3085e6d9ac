"""The one interface every translation engine implements (:class:`Backend`), and what a
call hands it (:class:`Request`).

An engine (the torch model, an ensemble of them, CTranslate2) only searches token ids: it
takes the source ids of a batch of rows and one call's options, and gives exactly one
n-best list per non-empty row (a :class:`~nmt.decode.search.Hypothesis` with ``failure``
set when its search produced nothing: a row is never dropped), plus, where it can,
teacher-forced scores and cross-attention. Everything about lines (tokenization, target
tags, truncation, empty lines, order, streaming, results) is written once on top of it, in
:class:`nmt.decode.engine.BaseTranslator`, which ``nmt translate``, the Python
``Translator`` API and ``nmt serve`` all go through.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from nmt.config import DecodeConfig
from nmt.data.tokenizer import Tokenizer
from nmt.decode.search import Hypothesis


@dataclass(frozen=True)
class Request:
    """One call's search settings and per-sentence inputs, for :meth:`Backend.search_rows`.

    Attributes:
        decode: the settings of this call (validated by
            :meth:`nmt.decode.engine.BaseTranslator.options`).
        prefixes: target-prefix ids of each row (``[]`` = none), or ``None`` for no prefixes.
        seeds: each row's sampling seed (:func:`nmt.decode.sampling.sentence_seed`) when sampling.
    """

    decode: DecodeConfig
    prefixes: list[list[int]] | None = None
    seeds: list[int] | None = None


class Backend(Protocol):
    """What a translation engine implements: ids and one call's options in, one n-best list
    per row out.

    Attributes:
        tokenizer: the model's tokenizer (its ids are the ones searched).
        max_src_tokens: the longest source (ids, without EOS) the model takes.
    """

    tokenizer: Tokenizer
    max_src_tokens: int

    def check_options(self, d: DecodeConfig, prefixes: bool) -> None:
        """Raise :class:`~nmt.errors.ConfigError` for settings this engine cannot apply
        (``prefixes``: the call forces target prefixes)."""

    def search_rows(
        self, ids: list[list[int]], request: Request | None = None
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Search the non-empty rows of ``ids`` (source ids without EOS) in batches; yields
        ``(rows, nbest lists)``, each non-empty row exactly once, its list best first and
        never empty (one hypothesis with ``failure`` set when the search found nothing)."""
        ...

    def forced_scores(self, src: list[list[int]], tgt: list[list[int]]) -> list[float]:
        """Log-probability (natural log, EOS included) of each target given its source,
        both ids without EOS.

        Raises:
            ConfigError: this engine cannot score given translations.
        """
        ...

    def cross_attention(self, src: list[list[int]], targets: list[list[int]]) -> list[torch.Tensor]:
        """One ``(n_layers, n_heads, len(target) + 1, len(source) + 1)`` float32 tensor per
        row: the teacher-forced cross-attention of each source translated into its target
        (:func:`nmt.decode.attention.cross_attention`).

        Raises:
            ConfigError: this engine gives no attention.
        """
        ...
