"""Cross-attention weights recomputed for an output (nmt.decode.attention)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nmt.decode.attention import cross_attention, hard_alignment
from nmt.model.transformer import Transformer


def test_weights_reproduce_each_layers_cross_attention_output(
    random_model: Callable[..., Transformer],
) -> None:
    """Weights times the values, through ``out_proj``, give what SDPA gave in the layer: the
    weights are the ones the model used, not an approximation."""
    model = random_model()
    src, tgt = [5, 6, 7, 8, 9], [10, 11, 12]
    outputs: list[torch.Tensor] = []
    memories: list[torch.Tensor] = []

    def keep(module: Any, args: Any, kwargs: dict[str, Any], out: torch.Tensor) -> None:
        outputs.append(out)
        memories.append(kwargs["memory"])

    hooks = [
        layer.cross_attn.register_forward_hook(keep, with_kwargs=True)
        for layer in model.decoder_layers
    ]
    att = cross_attention(model, src, tgt)
    for h in hooks:
        h.remove()
    n_layers, n_heads = model.cfg.n_decoder_layers, model.cfg.n_heads
    assert att.weights.shape == (n_layers, n_heads, len(tgt) + 1, len(src) + 1)
    torch.testing.assert_close(att.weights.sum(-1), torch.ones(n_layers, n_heads, len(tgt) + 1))
    assert len(outputs) == n_layers
    with torch.inference_mode():
        for i, layer in enumerate(model.decoder_layers):
            _, v = layer.cross_attn.project_kv(memories[i])  # (1, n_heads, src_len, head_dim)
            mixed = att.weights[i][None] @ v  # (1, n_heads, tgt_len, head_dim)
            merged = mixed.transpose(1, 2).reshape(1, len(tgt) + 1, -1)  # (1, tgt_len, d_model)
            out = layer.cross_attn.out_proj(merged)
            torch.testing.assert_close(out, outputs[i], atol=1e-5, rtol=1e-5)


def test_hard_alignment_takes_the_penultimate_layers_mean_argmax_without_eos() -> None:
    """The layer nmt translate --alignment reads by default, so the page and the command
    draw the same links."""
    weights = torch.zeros(3, 2, 4, 4)  # (layers, heads, tgt 3 + EOS, src 3 + EOS)
    weights[0, :, :, 0] = 1.0  # the first and the last layer are ignored
    weights[2, :, :, 2] = 1.0
    weights[1, 0] = torch.tensor([[0, 1, 0, 0], [0, 0, 0.4, 0.6], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    weights[1, 1] = torch.tensor([[0, 1, 0, 0], [0, 0, 0.4, 0.6], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    # Target piece 1 attends most to EOS (0.6): the alignment takes the best real piece, 2.
    assert hard_alignment(weights) == [(1, 0), (2, 1), (0, 2)]
