"""Validation during training: the teacher-forced loss on the valid pairs and sacreBLEU
BLEU/chrF of the model's own search output on the valid source lines.

Under torchrun every process takes its share (every world_size-th batch or line) and the
results are summed or gathered, so that no process idles in a collective while another
validates alone, and validation takes 1/world_size of the time.
"""

from __future__ import annotations

import torch

from nmt.config import DecodeConfig
from nmt.data.batching import make_batches
from nmt.data.parallel import ParallelData, collate
from nmt.data.tokenizer import Tokenizer
from nmt.decode.translate import Translator
from nmt.evaluate.score import MetricResult, corpus_scores
from nmt.model.transformer import Transformer
from nmt.train.distributed import DistEnv, gather_objects, sum_across
from nmt.train.loss import label_smoothed_loss


@torch.no_grad()
def valid_loss(
    model: Transformer,
    data: ParallelData,
    batch_tokens: int,
    label_smoothing: float,
    device: torch.device,
    dist: DistEnv | None = None,
) -> tuple[float, float, int]:
    """Teacher-forced label-smoothed loss and NLL summed over the target tokens of ``data``
    (natural log), and the number of those tokens (EOS included), over all processes (each
    computes every world_size-th batch; all must call this). Leaves the model in eval
    mode."""
    dist = dist or DistEnv()
    model.eval()
    total = nll_total = 0.0
    tokens = 0
    batches = make_batches(data.src_lens, data.tgt_lens, batch_tokens, 0)
    for i in range(dist.rank, len(batches), dist.world_size):
        batch_indices = batches[i]
        batch = collate(data, batch_indices).to(device)
        states = model(batch.src, batch.tgt_in)
        loss, nll = label_smoothed_loss(model, states, batch.tgt_out, label_smoothing)
        total, nll_total = total + float(loss), nll_total + float(nll)
        tokens += batch.n_tgt_tokens
    total, nll_total, all_tokens = sum_across([total, nll_total, float(tokens)], dist, device)
    return total, nll_total, int(all_tokens)


def search_output(
    model: Transformer,
    tokenizer: Tokenizer,
    src: list[str],
    beam_size: int,
    batch_tokens: int,
    dist: DistEnv | None = None,
) -> list[str]:
    """The model's translations of ``src`` (beam search; ``beam_size`` 1 = greedy), in
    order, on every process: each translates every world_size-th line and the lines are
    gathered (all must call this). Leaves the model in eval mode."""
    dist = dist or DistEnv()
    translator = Translator(
        model, tokenizer, DecodeConfig(beam_size=beam_size, batch_tokens=batch_tokens)
    )
    mine = [t.text for t in translator.translate(src[dist.rank :: dist.world_size])]
    shares = [list(share) for share in gather_objects(mine, dist)]  # type: ignore[call-overload]
    return [shares[i % dist.world_size][i // dist.world_size] for i in range(len(src))]


def bleu_chrf(hyps: list[str], refs: list[str]) -> dict[str, MetricResult]:
    """sacreBLEU BLEU and chrF of ``hyps`` against one reference each."""
    return corpus_scores(hyps, [refs], metrics=("bleu", "chrf"))
