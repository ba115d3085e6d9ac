"""One incremental decoding step of a decoder layer, for inference
(:meth:`nmt.model.transformer.Transformer.decode_step` runs it layer by layer).

This is what the decoder layers compute for one new target position, written against their
weights directly: every ``nn.Module`` call costs microseconds of Python (hooks, ``__call__``,
``__getattr__``) and a step of a small decoder made ~60 of them, a fixed cost per step that
small batches could not spread over many rows. Activations stay ``(rows, d_model)``; the
linear layers' own ``forward`` is called (``nn.Linear``, :class:`nmt.model.onednn.OneDNNLinear` or
a quantized one), so the products are the same ones the modules compute. No dropout: the
step is for search in eval mode (training and validation decode whole prefixes with
:meth:`~nmt.model.transformer.Transformer.decode`, which tests compare this step with).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from nmt.model.cache import LayerCache

if TYPE_CHECKING:
    from nmt.model.layers import DecoderLayer, FeedForward, MultiHeadAttention, Sublayer


def layer_step(
    layer: DecoderLayer, x: torch.Tensor, cache: LayerCache, mask: torch.Tensor
) -> torch.Tensor:
    """One decoder layer on ``(rows, d_model)``; ``mask``: :attr:`DecoderCache.attn_mask`."""
    x = residual(layer.self_block, x, lambda h: self_attention(layer.self_attn, h, cache))
    x = residual(layer.cross_block, x, lambda h: cross_attention(layer.cross_attn, h, cache, mask))
    return residual(layer.ffn_block, x, lambda h: feed_forward(layer.ffn, h))


def residual(
    block: Sublayer, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """:class:`~nmt.model.transformer.Sublayer` without dropout: pre-norm ``x + fn(norm(x))`` or
    post-norm ``norm(x + fn(x))``."""
    if block.pre_norm:
        return x + fn(layer_norm(block.norm, x))
    return layer_norm(block.norm, x + fn(x))


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``: the op ``F.layer_norm`` calls, without its checks (its last argument,
    cudnn_enable, is unused by the op)."""
    return torch.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps, False)


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s product without ``nn.Module.__call__`` (no hooks run)."""
    return module.forward(x)  # type: ignore[no-any-return]


def self_attention(attn: MultiHeadAttention, h: torch.Tensor, cache: LayerCache) -> torch.Tensor:
    """One query per row over the cached prefix and this step: ``(rows, d_model)`` →
    ``(rows, d_model)``. No causal mask: the new position may see the whole prefix."""
    rows = h.size(0)
    q, k, v = linear(attn.qkv_proj, h).view(rows, 3, attn.n_heads, 1, attn.head_dim).unbind(1)
    k, v = cache.append(k, v)  # (rows, n_heads, step + 1, head_dim)
    out = F.scaled_dot_product_attention(q, k, v)  # (rows, n_heads, 1, head_dim)
    return linear(attn.out_proj, out.view(rows, -1))


def cross_attention(
    attn: MultiHeadAttention, h: torch.Tensor, cache: LayerCache, mask: torch.Tensor
) -> torch.Tensor:
    """The beams of a sentence attend to its source as the queries of one row, so the keys
    and values are neither copied nor reordered per beam: ``(rows, d_model)`` →
    ``(rows, d_model)``."""
    rows, sentences = h.size(0), cache.cross_k.size(0)
    q = linear(attn.q_proj, h).view(sentences, rows // sentences, attn.n_heads, attn.head_dim)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), cache.cross_k, cache.cross_v, attn_mask=mask
    )  # (sentences, n_heads, beam, head_dim)
    return linear(attn.out_proj, out.transpose(1, 2).reshape(rows, -1))


def feed_forward(ffn: FeedForward, h: torch.Tensor) -> torch.Tensor:
    """``fc2(act(fc1(h)))`` on ``(rows, d_model)``."""
    return linear(ffn.fc2, ffn.activation(linear(ffn.fc1, h)))
