"""Ensembles: several models with one vocabulary decoding as one.

At every step the next-token log-probabilities of the models are combined as a weighted sum,
``sum_i w_i log P_i(y | y_<t, x)`` (Marian's ``--models`` / ``--weights``; fairseq averages
probabilities instead). The sum is linear, so an ensemble's score of an output is the weighted
sum of its models' scores of that output (teacher-forced), and weights ``1, 0`` reproduce the
first model alone; with weights summing to 1 it is the log of an unnormalized geometric mean
of the models' distributions. :class:`Ensemble` has the parts of
:class:`~nmt.model.transformer.Transformer` that search uses (``cfg``, ``encode``, ``init_cache``,
``decode_step``), so greedy search, beam search, sampling and target prefixes work unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from nmt.config import ModelConfig
from nmt.errors import ConfigError
from nmt.model.cache import DecoderCache
from nmt.model.transformer import Transformer


def parse_weights(text: str | None, n_models: int) -> list[float]:
    """``"0.5,0.5"`` → ``[0.5, 0.5]``; ``None`` → equal weights summing to 1.

    Raises:
        ConfigError: not ``n_models`` numbers, a negative or non-finite one, or all 0.
    """
    if text is None:
        return [1.0 / n_models] * n_models
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"ensemble weights {text!r}: give numbers separated by commas") from None
    if len(weights) != n_models or not all(0 <= w < math.inf for w in weights) or not sum(weights):
        raise ConfigError(
            f"ensemble weights {text!r}: give {n_models} finite, non-negative numbers, one per "
            "model, not all 0"
        )
    return weights


@dataclass
class EnsembleCache:
    """One :class:`~nmt.model.cache.DecoderCache` per model, reordered together."""

    caches: list[DecoderCache]

    def reorder(self, index: torch.Tensor, rows_per_sentence: int | None = None) -> None:
        """Keep decoder rows ``index`` of every model (:meth:`DecoderCache.reorder`)."""
        for cache in self.caches:
            cache.reorder(index, rows_per_sentence)


class Ensemble:
    """Models with one vocabulary whose log-probabilities are summed with ``weights``.

    Args:
        models: in eval mode, with the same ``vocab_size`` (and SentencePiece model).
        weights: one non-negative weight per model.

    Raises:
        ConfigError: vocabulary sizes differ, or not one weight per model.
    """

    def __init__(self, models: Sequence[Transformer], weights: Sequence[float]):
        sizes = {m.cfg.vocab_size for m in models}
        if len(sizes) > 1:
            raise ConfigError(f"ensemble models have different vocabulary sizes {sorted(sizes)}")
        if len(weights) != len(models):
            raise ConfigError(f"{len(weights)} ensemble weights for {len(models)} models")
        self.models, self.weights = list(models), list(weights)
        limit = min(m.cfg.max_positions for m in models)
        self.cfg: ModelConfig = replace(models[0].cfg, max_positions=limit)

    def encode(self, src: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each model's memory ``(batch, src_len, d_model_i)``, and the ``(batch, 1, 1,
        src_len)`` source mask they share."""
        encoded = [m.encode(src) for m in self.models]
        return [memory for memory, _ in encoded], encoded[0][1]

    def init_cache(
        self,
        memories: list[torch.Tensor],
        src_mask: torch.Tensor,
        *,
        vocab_ids: torch.Tensor | None = None,
    ) -> EnsembleCache:
        """Every model's cross-attention keys/values, projected once per sentence; with
        ``vocab_ids`` (a shortlist), every model's output restricted to those ids, each
        normalized over them before the weighted sum (as Marian's ensembles with a
        shortlist)."""
        return EnsembleCache(
            [
                m.init_cache(memory, src_mask, vocab_ids=vocab_ids)
                for m, memory in zip(self.models, memories)
            ]
        )

    def decode_step(self, tokens: torch.Tensor, cache: EnsembleCache) -> torch.Tensor:
        """``(rows,)`` tokens → ``(rows, vocab)`` weighted sum of the models' float32
        log-probabilities of the next token."""
        total = torch.zeros(())
        for model, weight, model_cache in zip(self.models, self.weights, cache.caches):
            total = total + weight * model.decode_step(tokens, model_cache)
        return total
