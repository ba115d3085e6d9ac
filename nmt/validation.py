"""Validation during training: the teacher-forced loss on the valid pairs and sacreBLEU
BLEU/chrF of the model's own search output on the valid source lines."""

from __future__ import annotations

import torch

from nmt.config import DecodeConfig
from nmt.data import ParallelData, collate, make_batches
from nmt.loss import label_smoothed_loss
from nmt.model import Transformer
from nmt.score import MetricResult, corpus_scores
from nmt.tokenizer import Tokenizer
from nmt.translate import Translator


@torch.no_grad()
def valid_loss(
    model: Transformer,
    data: ParallelData,
    batch_tokens: int,
    label_smoothing: float,
    device: torch.device,
) -> tuple[float, float, int]:
    """Teacher-forced label-smoothed loss and NLL summed over the target tokens of ``data``
    (natural log), and the number of those tokens (EOS included). Leaves the model in eval
    mode."""
    model.eval()
    total = nll_total = 0.0
    tokens = 0
    for batch_indices in make_batches(data.src_lens, data.tgt_lens, batch_tokens, 0):
        batch = collate(data, batch_indices).to(device)
        states = model(batch.src, batch.tgt_in)
        loss, nll = label_smoothed_loss(model, states, batch.tgt_out, label_smoothing)
        total, nll_total = total + float(loss), nll_total + float(nll)
        tokens += batch.n_tgt_tokens
    return total, nll_total, tokens


def search_output(
    model: Transformer, tokenizer: Tokenizer, src: list[str], beam_size: int, batch_tokens: int
) -> list[str]:
    """The model's translations of ``src`` (beam search; ``beam_size`` 1 = greedy). Leaves
    the model in eval mode."""
    translator = Translator(
        model, tokenizer, DecodeConfig(beam_size=beam_size, batch_tokens=batch_tokens)
    )
    return [t.text for t in translator.translate(src)]


def bleu_chrf(hyps: list[str], refs: list[str]) -> dict[str, MetricResult]:
    """sacreBLEU BLEU and chrF of ``hyps`` against one reference each."""
    return corpus_scores(hyps, [refs], metrics=("bleu", "chrf"))
