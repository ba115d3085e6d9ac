"""The encoder-decoder Transformer of Vaswani et al. (2017), batch-first throughout.

Structure follows the paper's figure 1: ``encode(src)`` gives the memory, ``decode(tgt_in,
memory, src_mask)`` gives next-token logits, and ``decode_step`` runs one incremental decoding
step against a :class:`DecoderCache` (self-attention keys/values grown step by step,
cross-attention keys/values projected once per sentence). Attention runs through
``torch.nn.functional.scaled_dot_product_attention``.

Self-attention projects queries, keys and values with one fused ``qkv_proj`` and
cross-attention keys and values with one ``kv_proj``: one matrix product instead of three
(or two) is faster on CPU and GPU, and is the layout CTranslate2 uses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import ModelConfig
from nmt.model import incremental
from nmt.model.cache import DecoderCache, LayerCache
from nmt.model.layers import DecoderLayer, EncoderLayer, sinusoidal_positions


class Transformer(nn.Module):
    """Encoder-decoder Transformer whose target embedding is tied to the output projection
    (Press & Wolf 2017), and with the source too unless the vocabularies are separate.

    Args:
        cfg: the model shape; ``cfg.vocab_size`` is the joint (or target) vocabulary. With
            ``cfg.src_vocab_size`` set, the encoder reads its own embedding ``src_embed``
            ``(src_vocab_size, d_model)``; otherwise ``src_embed`` is ``None`` and the
            encoder reads ``embed``. With ``cfg.output_bias`` the logits get a learned bias
            ``output_bias`` ``(vocab,)``.
    """

    positions: torch.Tensor  # (max_positions, d_model) buffer, not saved

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.src_embed = (
            nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
            if cfg.src_vocab_size
            else None
        )
        self.register_buffer(
            "positions",
            sinusoidal_positions(cfg.max_positions, cfg.d_model, cfg.position_layout),
            persistent=False,
        )
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.output_bias else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        # Pre-norm stacks end with a LayerNorm; post-norm layers are already normalized.
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        # Computes logits() instead of F.linear when set (nmt.model.onednn, for CPU inference).
        self.output_linear: nn.Module | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linear weights, N(0, d_model^-0.5) embeddings (as fairseq)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for embed in (self.embed, self.src_embed):
            if embed is not None:
                nn.init.normal_(embed.weight, std=self.cfg.d_model**-0.5)
                with torch.no_grad():
                    embed.weight[self.cfg.pad_id].zero_()
        with torch.no_grad():
            if self.output_bias is not None:
                self.output_bias.zero_()

    def embed_tokens(
        self, ids: torch.Tensor, offset: int = 0, embed: nn.Embedding | None = None
    ) -> torch.Tensor:
        """``(batch, len)`` ids → ``(batch, len, d_model)``: scaled embedding (``embed``, by
        default the target one) + positions from ``offset``."""
        if offset + ids.size(1) > self.cfg.max_positions:
            raise ValueError(
                f"sequence of {offset + ids.size(1)} tokens exceeds max_positions="
                f"{self.cfg.max_positions}"
            )
        embed = embed or self.embed
        x = embed(ids) * self.embed_scale + self.positions[offset : offset + ids.size(1)]
        return self.dropout(x)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder.

        Args:
            src: ``(batch, src_len)`` int64 ids ending in EOS, right-padded with PAD.

        Returns:
            memory ``(batch, src_len, d_model)`` and src_mask ``(batch, 1, 1, src_len)`` bool
            (True = real token).
        """
        src_mask = (src != self.cfg.pad_id)[:, None, None, :]
        x = self.embed_tokens(src, embed=self.src_embed)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x), src_mask

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output projection tied to the embedding (plus ``output_bias`` if the model has
        one): ``(..., d_model)`` → ``(..., vocab)``."""
        if self.output_linear is not None:
            return self.output_linear(h)
        return F.linear(h, self.embed.weight, self.output_bias)

    def decode(
        self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced decoding of a whole target prefix (training, scoring).

        Args:
            tgt_in: ``(batch, tgt_len)`` int64, BOS + target ids.
            memory: ``(batch, src_len, d_model)``; src_mask: ``(batch, 1, 1, src_len)`` bool.

        Returns:
            ``(batch, tgt_len, d_model)`` final decoder states; :meth:`logits` maps them to the
            vocabulary (kept apart so that training projects only non-pad positions).
        """
        return self.decode_with_attention(tgt_in, memory, src_mask, ())[0]

    def decode_with_attention(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        layers: Collection[int] | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """:meth:`decode`, also returning the cross-attention weights of decoder ``layers``
        (0-based; ``None`` = all), computed beside SDPA only for those layers
        (:meth:`nmt.model.layers.MultiHeadAttention.cross_attend`). Nothing is kept on the
        modules, so threads may call it on one shared model.

        Returns:
            The states as :meth:`decode`, and by layer the weights ``(batch, n_heads,
            tgt_len, src_len)`` float32, 0 on source padding.
        """
        x = self.embed_tokens(tgt_in)
        weights = {}
        for i, layer in enumerate(self.decoder_layers):
            x, w = layer(x, memory, src_mask, layers is None or i in layers)
            if w is not None:
                weights[i] = w
        return self.decoder_norm(x), weights

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """``(batch, src_len)``, ``(batch, tgt_len)`` → ``(batch, tgt_len, d_model)`` states."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def output_rows(self, vocab_ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The output projection restricted to target ids ``vocab_ids`` ``(n,)`` int64: the
        rows of the tied weight (and of ``output_bias``) sliced once, ``(..., d_model)`` →
        ``(..., n)`` logits, column ``j`` being token ``vocab_ids[j]``; computed by the same
        kernel as the whole projection (``output_linear``'s ``with_weight``, else
        ``F.linear``). As Marian's and CTranslate2's shortlists (:mod:`nmt.decode.shortlist`).
        """
        weight = self.embed.weight.index_select(0, vocab_ids)
        bias = None if self.output_bias is None else self.output_bias.index_select(0, vocab_ids)
        with_weight = getattr(self.output_linear, "with_weight", None)
        if with_weight is not None:
            return cast(Callable[[torch.Tensor], torch.Tensor], with_weight(weight, bias))
        return functools.partial(F.linear, weight=weight, bias=bias)

    def init_cache(
        self,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        rows_per_sentence: int = 1,
        vocab_ids: torch.Tensor | None = None,
    ) -> DecoderCache:
        """Project cross-attention keys/values once per sentence for incremental decoding.

        Args:
            memory: ``(sentences, src_len, d_model)``; src_mask: ``(sentences, 1, 1, src_len)``.
            rows_per_sentence: decoder rows per sentence; :meth:`decode_step` then takes
                ``sentences * rows_per_sentence`` rows, each sentence's rows adjacent.
            vocab_ids: ``(n,)`` sorted target ids that :meth:`decode_step` computes
                log-probabilities for (:meth:`output_rows`); ``None`` = all.
        """
        layers = [
            LayerCache(*cast(DecoderLayer, layer).cross_attn.project_kv(memory))
            for layer in self.decoder_layers
        ]
        output = None if vocab_ids is None else self.output_rows(vocab_ids)
        return DecoderCache(layers, src_mask, rows_per_sentence, output=output)

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """One incremental decoding step.

        Args:
            tokens: ``(rows,)`` int64, the token at position ``cache.step`` of each row.
            cache: updated in place (its self-attention prefix grows by one).

        For inference (eval mode: no dropout): each layer runs
        :func:`nmt.model.incremental.layer_step`.

        Returns:
            ``(rows, vocab)`` float32 log-probabilities of the next token; with a cache made
            for a subset of the vocabulary (``init_cache(vocab_ids=...)``), ``(rows, n)``
            log-probabilities normalized over that subset (:meth:`output_log_probs`).

        Raises:
            ValueError: the sequence would exceed ``cfg.max_positions``.
        """
        limit = self.cfg.max_positions
        if cache.step >= limit:
            raise ValueError(f"sequence of {cache.step + 1} tokens exceeds max_positions={limit}")
        x = F.embedding(tokens, self.embed.weight) * self.embed_scale + self.positions[cache.step]
        for layer, layer_cache in zip(self.decoder_layers, cache.layers):
            x = incremental.layer_step(layer, x, layer_cache, cache.attn_mask)  # type: ignore[arg-type]
        cache.step += 1
        return self.output_log_probs(self.decoder_norm(x), cache.output)

    def output_log_probs(
        self, h: torch.Tensor, output: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``(rows, d_model)`` final decoder states → ``(rows, n)`` float32 log-probabilities:
        over the whole vocabulary (``output`` ``None``, :meth:`logits`), or over the ``n`` ids
        of a restricted projection (:meth:`output_rows`), the softmax then normalizing over
        those ids alone, as Marian's and CTranslate2's shortlists do: ``log p(y) - log
        sum_{y' in subset} p(y')`` of the whole vocabulary's ``p``."""
        logits = self.logits(h) if output is None else output(h)
        return F.log_softmax(logits.float(), dim=-1)
