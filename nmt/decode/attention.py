"""Cross-attention of translations, and the hard piece alignment read from it.

Search does not keep attention weights (SDPA never forms them, and keeping them for every
beam would cost memory for nothing), so they are recomputed for the chosen outputs by one
batched, teacher-forced decoder pass: the decoder reads BOS + each output, and the layers
asked for return their cross-attention weights ``softmax(q kᵀ / sqrt(head_dim))`` over the
source (Vaswani et al. 2017, eq. 1) from that forward pass
(:meth:`nmt.model.transformer.Transformer.decode_with_attention`). No hook is registered and
nothing is stored on the model, so threads sharing one model (the server's workers) may call
it at once. Row ``t`` is the attention of the step that predicted target token ``t`` (the last
row: the step that predicted EOS); the columns are the source pieces and the source's EOS.

:func:`cross_attention` is the one place attention is computed: ``nmt translate --alignment``
(word level, :mod:`nmt.decode.alignment`), the server's ``return_attention`` and
``return_alignment`` and its web page (piece level, :class:`Attention`) all read it.

The hard piece alignment links each target piece to the source piece with the most attention,
averaged over the heads of the penultimate decoder layer (as ``nmt translate --alignment``
reads it by default: :func:`nmt.decode.alignment.default_layer`, Garg et al. 2019), EOS
excluded. An untrained or a non-alignment-trained model's attention is a soft, approximate
alignment, not a word aligner's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nmt.data.parallel import pad
from nmt.decode.alignment import default_layer
from nmt.model.transformer import Transformer


@torch.inference_mode()
def cross_attention(
    model: Transformer,
    src: torch.Tensor,
    targets: Sequence[Sequence[int]],
    layers: Sequence[int] | None = None,
) -> torch.Tensor:
    """Cross-attention weights of ``model`` translating each source into its target.

    Args:
        src: ``(batch, src_len)`` int64 source ids ending in EOS, right-padded with PAD.
        targets: each row's target ids without BOS and EOS.
        layers: the 0-based decoder layers to return, in this order (default: all).

    Returns:
        ``(batch, len(layers), n_heads, tgt_len + 1, src_len)`` float32 on ``src``'s device,
        ``tgt_len`` the longest target; each real row sums to 1. Rows past a target's EOS
        row and columns of source padding are 0.

    Raises:
        IndexError: a layer the model does not have
            (:func:`nmt.decode.alignment.check_layer` checks user input first).
    """
    cfg = model.cfg
    chosen = list(range(cfg.n_decoder_layers)) if layers is None else list(layers)
    if any(not 0 <= i < cfg.n_decoder_layers for i in chosen):
        raise IndexError(f"layers {chosen}: the model has {cfg.n_decoder_layers} decoder layers")
    memory, src_mask = model.encode(src)
    # BOS may be PAD's id (imported Marian models): real rows are counted, not read from ids.
    tgt_in = pad([[cfg.bos_id, *t] for t in targets], pad_id=cfg.pad_id).to(src.device)
    _, by_layer = model.decode_with_attention(tgt_in, memory, src_mask, set(chosen))
    weights = torch.stack([by_layer[i] for i in chosen], 1)  # (batch, L, H, tgt_len + 1, src)
    lengths = torch.tensor([len(t) + 1 for t in targets], device=src.device)
    past = torch.arange(tgt_in.size(1), device=src.device)[None, :] >= lengths[:, None]
    return weights.masked_fill(past[:, None, None, :, None], 0.0)


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

    @classmethod
    def of(cls, weights: torch.Tensor) -> Attention:
        """The attention of ``weights`` ``(n_layers, n_heads, tgt_len, src_len)`` with its
        :func:`hard_alignment`."""
        return cls(weights, hard_alignment(weights))

    def pharaoh(self) -> str:
        """The alignment as ``"src-tgt"`` pairs separated by spaces (``"0-0 1-2 ..."``)."""
        return " ".join(f"{s}-{t}" for s, t in self.alignment)


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
