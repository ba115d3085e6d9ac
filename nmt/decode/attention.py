"""Cross-attention of a translation, and the hard alignment read from it.

Search does not keep attention weights (SDPA never forms them, and keeping them for every
beam would cost memory for nothing), so they are recomputed for the chosen output by one
teacher-forced pass: the decoder reads BOS + the output tokens, and each decoder layer's
cross-attention weights ``softmax(q kᵀ / sqrt(head_dim))`` over the source (Vaswani et al.
2017, eq. 1) are formed from the queries and keys that layer computed. Row ``t`` is the
attention of the step that predicted target token ``t`` (the last row: the step that
predicted EOS); the columns are the source pieces and the source's EOS.

The hard alignment links each target piece to the source piece with the most attention,
averaged over the heads of the penultimate decoder layer (as ``nmt translate --alignment``
reads it by default: :func:`nmt.decode.alignment.default_layer`, Garg et al. 2019) and EOS
excluded. An untrained or a
non-alignment-trained model's attention is a soft, approximate alignment, not a word
aligner's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from nmt.decode.alignment import attention_weights, default_layer
from nmt.model.layers import DecoderLayer, MultiHeadAttention
from nmt.model.transformer import Transformer


@dataclass(frozen=True)
class Attention:
    """Cross-attention of one translation.

    Attributes:
        weights: ``(n_layers, n_heads, tgt_len, src_len)`` float32; each row sums to 1.
            ``tgt_len`` = target pieces + 1 (EOS), ``src_len`` = source pieces + 1 (EOS).
        alignment: ``(src_index, tgt_index)`` pairs, one per target piece (EOS excluded),
            0-based piece positions.
    """

    weights: torch.Tensor
    alignment: list[tuple[int, int]]

    def pharaoh(self) -> str:
        """The alignment as ``"src-tgt"`` pairs separated by spaces (``"0-0 1-2 ..."``)."""
        return " ".join(f"{s}-{t}" for s, t in self.alignment)


@torch.inference_mode()
def cross_attention(model: Transformer, src_ids: list[int], tgt_ids: list[int]) -> Attention:
    """Cross-attention weights of ``model`` translating ``src_ids`` into ``tgt_ids``.

    Args:
        src_ids: source ids without EOS (as searched; EOS is appended here).
        tgt_ids: target ids without BOS and EOS (a hypothesis' ``tokens``).

    Returns:
        :class:`Attention` with weights ``(n_layers, n_heads, len(tgt_ids) + 1,
        len(src_ids) + 1)``.
    """
    device = next(model.parameters()).device
    src = torch.tensor([[*src_ids, model.cfg.eos_id]], device=device)
    tgt_in = torch.tensor([[model.cfg.bos_id, *tgt_ids]], device=device)
    captured: list[torch.Tensor] = []

    def capture(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        attn = cast(MultiHeadAttention, module)
        captured.append(attention_weights(attn, args[0], kwargs["memory"], kwargs["mask"]))

    hooks = [
        cast(DecoderLayer, layer).cross_attn.register_forward_pre_hook(capture, with_kwargs=True)
        for layer in model.decoder_layers
    ]
    try:
        memory, src_mask = model.encode(src)
        model.decode(tgt_in, memory, src_mask)
    finally:
        for hook in hooks:
            hook.remove()
    weights = torch.stack([w[0] for w in captured]).float().cpu()  # (L, H, T, S)
    return Attention(weights, hard_alignment(weights))


def hard_alignment(weights: torch.Tensor) -> list[tuple[int, int]]:
    """``(src, tgt)`` pairs: for each target piece (the last row, EOS, excluded) the source
    piece (EOS excluded) with the most attention, averaged over the heads of the penultimate
    layer (:func:`nmt.decode.alignment.default_layer`, the only one of a one-layer decoder).

    Args:
        weights: ``(n_layers, n_heads, tgt_len, src_len)``.
    """
    n_tgt, n_src = weights.size(2) - 1, weights.size(3) - 1
    if n_tgt < 1 or n_src < 1:
        return []
    layer = default_layer(weights.size(0))
    mean = weights[layer].mean(0)[:n_tgt, :n_src]  # (tgt pieces, src pieces)
    return [(int(s), t) for t, s in enumerate(mean.argmax(-1).tolist())]
