"""The Transformer's layers (Vaswani et al. 2017): sinusoidal positions, multi-head attention,
the position-wise feed-forward network, the residual sublayer, and the encoder and decoder
layers that :class:`nmt.model.transformer.Transformer` stacks.

Self-attention projects queries, keys and values with one fused ``qkv_proj`` and
cross-attention keys and values with one ``kv_proj``: one matrix product instead of three
(or two) is faster on CPU and GPU, and is the layout CTranslate2 uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import ModelConfig


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
            return self.cross_attend(x, memory, mask)[0]
        q, k, v = self.split_heads(self.qkv_proj(x))
        return self.attend(q, k, v, mask, causal)

    def cross_attend(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attention from ``x`` over ``memory``, and its weights when asked for.

        The output comes from SDPA, as without weights. The weights are computed beside it
        from the same queries and keys, ``softmax(q kᵀ / sqrt(head_dim))`` (Vaswani et al.
        2017, eq. 1) in float32 whatever the model's dtype, with masked columns 0 (as SDPA
        masks them); they are returned, not kept, so concurrent calls share nothing.

        Args:
            x: ``(batch, tgt_len, d_model)`` the (normalized) queries' input.
            memory: ``(batch, src_len, d_model)``.
            mask: ``(batch, 1, 1, src_len)`` bool, True = attend.

        Returns:
            ``(batch, tgt_len, d_model)``, and weights ``(batch, n_heads, tgt_len, src_len)``
            float32 (each row sums to 1) or ``None``.
        """
        q = self.split_heads(self.q_proj(x))[0]  # (batch, n_heads, tgt_len, head_dim)
        k, v = self.project_kv(memory)  # (batch, n_heads, src_len, head_dim)
        out = self.attend(q, k, v, mask, causal=False)
        if not need_weights:
            return out, None
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return out, scores.softmax(-1)  # (batch, n_heads, tgt_len, src_len)


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
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x``: ``(batch, tgt_len, d_model)``; ``memory``: ``(batch, src_len, d_model)``;
        ``src_mask``: ``(batch, 1, 1, src_len)`` bool.

        Returns:
            ``(batch, tgt_len, d_model)``, and with ``need_weights`` the cross-attention
            weights ``(batch, n_heads, tgt_len, src_len)`` float32
            (:meth:`MultiHeadAttention.cross_attend`), else ``None``.
        """
        x = self.self_block(x, lambda h: self.self_attn(h, causal=True))
        weights: list[torch.Tensor | None] = []  # local to this call: nothing shared

        def cross(h: torch.Tensor) -> torch.Tensor:
            out, w = self.cross_attn.cross_attend(h, memory, src_mask, need_weights)
            weights.append(w)
            return out

        x = self.cross_block(x, cross)
        return self.ffn_block(x, self.ffn), weights[0]
