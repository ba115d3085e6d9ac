"""Scoring given translations: the model's log-probability of a target given its source, by
teacher-forced decoding (fairseq's ``--score-reference``, Sockeye's ``sockeye-score``,
CTranslate2's ``score_batch``), for filtering corpora and reranking.

The score of target tokens ``y_1..y_n`` is ``sum_t log P(y_t | y_<t, x) + log P(EOS | y, x)``
(natural log), exactly what search reports for a hypothesis with those tokens; the
length-normalised score divides it by the GNMT penalty of ``n + 1`` tokens, as beam search
ranks (Wu et al. 2016, eq. 14).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nmt.data.parallel import pad
from nmt.decode.ensemble import Ensemble
from nmt.decode.search import length_penalty
from nmt.model.transformer import Transformer


@torch.inference_mode()
def forced_scores(
    model: Transformer | Ensemble, src: torch.Tensor, targets: Sequence[Sequence[int]]
) -> list[float]:
    """Log-probability of each target (and EOS) given its source.

    Args:
        src: ``(batch, src_len)`` int64 source ids ending in EOS, right-padded.
        targets: each sentence's target ids without BOS and EOS.

    Returns:
        ``batch`` log-probabilities (natural log); for an ensemble, the weighted sum of its
        models' (what its search scores).
    """
    if isinstance(model, Ensemble):
        each = [forced_scores(m, src, targets) for m in model.models]
        return [sum(w * s[i] for w, s in zip(model.weights, each)) for i in range(len(targets))]
    cfg = model.cfg
    memory, src_mask = model.encode(src)
    tgt_in = pad([[cfg.bos_id, *t] for t in targets], pad_id=cfg.pad_id)  # (batch, tgt_len + 1)
    labels = pad([[*t, cfg.eos_id] for t in targets], pad_id=cfg.pad_id)  # (batch, tgt_len + 1)
    tgt_in, labels = tgt_in.to(src.device), labels.to(src.device)
    hidden = model.decode(tgt_in, memory, src_mask)  # (batch, tgt_len + 1, d_model)
    logp = F.log_softmax(model.logits(hidden).float(), -1)  # (batch, tgt_len + 1, vocab)
    token_logp = logp.gather(2, labels[:, :, None])[:, :, 0]  # (batch, tgt_len + 1)
    return token_logp.masked_fill(labels == cfg.pad_id, 0.0).sum(1).tolist()


def normalized(score: float, n_tokens: int, alpha: float) -> float:
    """``score`` divided by the GNMT penalty of ``n_tokens`` target tokens plus EOS."""
    return score / length_penalty(n_tokens + 1, alpha)
