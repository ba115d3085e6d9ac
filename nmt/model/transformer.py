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

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import ModelConfig
from nmt.model import incremental
from nmt.model.cache import DecoderCache, LayerCache


def sinusoidal_positions(
    n_positions: int, d_model: int, layout: str = "interleaved"
) -> torch.Tensor:
    """Sinusoidal position encodings (Vaswani et al. 2017, §3.5), positions from 0.

    Args:
        layout: ``interleaved``: sin on even, cos on odd channels; ``halves``: the sines in
            channels ``[0, d/2)`` and the cosines in ``[d/2, d)``, with the same frequencies
            (Marian's layout; Junczys-Dowmunt et al. 2018).

    Returns:
        ``(n_positions, d_model)`` float32.
    """
    position = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    table = torch.zeros(n_positions, d_model)
    if layout == "halves":
        half = (d_model + 1) // 2
        table[:, :half] = torch.sin(position * inv_freq)
        table[:, half:] = torch.cos(position * inv_freq[: d_model - half])
        return table
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return table


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, §3.2).

    Args:
        d_model: model width; n_heads: heads (``head_dim = d_model / n_heads``).
        dropout: attention-weight dropout (training only).
        cross: True for encoder-decoder attention (keys/values from the memory).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, cross: bool):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, d_model // n_heads, dropout
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(batch, len, n * d_model)`` → n tensors ``(batch, n_heads, len, head_dim)``."""
        b, t, _ = x.shape
        return x.view(b, t, -1, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values, each ``(batch, n_heads, src_len, head_dim)``."""
        k, v = self.split_heads(self.kv_proj(memory))
        return k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        """SDPA over ``(batch, n_heads, len, head_dim)`` inputs → ``(batch, q_len, d_model)``.

        ``mask`` is bool and True = attend (the opposite of a key-padding mask).
        """
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, d_model)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` ``(batch, len, d_model)``.

        Self-attention: keys/values from ``x``. Cross-attention: keys/values from ``memory``
        ``(batch, src_len, d_model)``. (Incremental decoding: :mod:`nmt.model.incremental`.)

        Returns:
            ``(batch, len, d_model)``.
        """
        if self.cross:
            assert memory is not None
            q = self.split_heads(self.q_proj(x))[0]
            k, v = self.project_kv(memory)
            return self.attend(q, k, v, mask, causal=False)
        q, k, v = self.split_heads(self.qkv_proj(x))
        return self.attend(q, k, v, mask, causal)


class FeedForward(nn.Module):
    """Position-wise feed-forward network ``fc2(dropout(act(fc1(x))))`` (§3.3), ``act`` ReLU
    or swish (SiLU; Ramachandran et al. 2017)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, ffn_dim), nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = F.silu if activation == "swish" else F.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, len, d_model)`` → ``(batch, len, d_model)``."""
        h = self.activation(self.fc1(x))
        return self.fc2(self.dropout(h) if self.dropout.p > 0 else h)


class Sublayer(nn.Module):
    """Residual connection around a sub-layer with LayerNorm before (pre-norm) or after it."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.dropout, self.pre_norm = (
            nn.LayerNorm(d_model),
            nn.Dropout(dropout),
            pre_norm,
        )

    def forward(self, x: torch.Tensor, fn) -> torch.Tensor:  # type: ignore[no-untyped-def]
        if self.pre_norm:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual :class:`Sublayer`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, False)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout, cfg.activation)
        self.attn_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``(batch, src_len, d_model)``; ``src_mask``: ``(batch, 1, 1, src_len)`` bool."""
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=src_mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the memory, then feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, False)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, True)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout, cfg.activation)
        self.self_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.cross_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``x``: ``(batch, tgt_len, d_model)``; ``memory``: ``(batch, src_len, d_model)``."""
        x = self.self_block(x, lambda h: self.self_attn(h, causal=True))
        x = self.cross_block(x, lambda h: self.cross_attn(h, mask=src_mask, memory=memory))
        return self.ffn_block(x, self.ffn)


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
        x = self.embed_tokens(tgt_in)
        for layer in self.decoder_layers:
            x = layer(x, memory, src_mask)
        return self.decoder_norm(x)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """``(batch, src_len)``, ``(batch, tgt_len)`` → ``(batch, tgt_len, d_model)`` states."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def init_cache(
        self, memory: torch.Tensor, src_mask: torch.Tensor, rows_per_sentence: int = 1
    ) -> DecoderCache:
        """Project cross-attention keys/values once per sentence for incremental decoding.

        Args:
            memory: ``(sentences, src_len, d_model)``; src_mask: ``(sentences, 1, 1, src_len)``.
            rows_per_sentence: decoder rows per sentence; :meth:`decode_step` then takes
                ``sentences * rows_per_sentence`` rows, each sentence's rows adjacent.
        """
        layers = [
            LayerCache(*cast(DecoderLayer, layer).cross_attn.project_kv(memory))
            for layer in self.decoder_layers
        ]
        return DecoderCache(layers, src_mask, rows_per_sentence)

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """One incremental decoding step.

        Args:
            tokens: ``(rows,)`` int64, the token at position ``cache.step`` of each row.
            cache: updated in place (its self-attention prefix grows by one).

        For inference (eval mode: no dropout), through :mod:`nmt.model.incremental`.

        Returns:
            ``(rows, vocab)`` float32 log-probabilities of the next token.
        """
        return incremental.decode_step(self, tokens, cache)
