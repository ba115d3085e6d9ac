"""Label-smoothed cross-entropy over the non-pad target positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nmt.model.transformer import Transformer


def label_smoothed_loss(
    model: Transformer, states: torch.Tensor, labels: torch.Tensor, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy (Szegedy et al. 2016, §7) and summed NLL.

    Only non-pad positions are projected to the vocabulary: the output layer is the largest
    matrix product of a step, and padding would waste it.

    Args:
        model: supplies the (tied) output projection.
        states: ``(batch, tgt_len, d_model)`` decoder states.
        labels: ``(batch, tgt_len)`` int64 gold next tokens, ``model.cfg.pad_id`` where padded.
        label_smoothing: epsilon; the smoothing mass is spread uniformly over the vocabulary.

    Returns:
        ``(loss, nll)``: float32 scalars, summed over the non-pad target tokens (divide by
        their count for a per-token value; ``exp(nll / n)`` is the perplexity).
    """
    keep = labels != model.cfg.pad_id
    logits = model.logits(states[keep]).float()  # (n_tokens, vocab)
    gold = labels[keep]
    loss = F.cross_entropy(logits, gold, label_smoothing=label_smoothing, reduction="sum")
    with torch.no_grad():
        nll = F.cross_entropy(logits, gold, reduction="sum")
    return loss, nll


class LossModule(torch.nn.Module):
    """The model and its loss as one module, so that DDP sees every use of the tied
    embedding (inside the model and in the output projection) in a single forward.

    Args:
        model: the Transformer; label_smoothing: epsilon.
    """

    def __init__(self, model: Transformer, label_smoothing: float):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, src_len)``, ``(batch, tgt_len)`` ×2 → summed (loss, nll) scalars."""
        states = self.model(src, tgt_in)
        return label_smoothed_loss(self.model, states, tgt_out, self.label_smoothing)
