"""Random sampling instead of search: one output per sentence, drawn token by token.

For back-translation and diverse outputs. The distribution of each step is the model's,
sharpened or flattened by a temperature (``logits / T``), then cut to the ``k`` most probable
tokens (top-k sampling, Fan et al. 2018, "Hierarchical Neural Story Generation") and/or to the
smallest set of most probable tokens whose probability reaches ``p`` (nucleus sampling,
Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"), and renormalized; the
names of the settings are CTranslate2's (``sampling_topk``, ``sampling_topp``,
``sampling_temperature``).

Each sentence draws from its own random stream, seeded from the call's seed and the sentence's
line number (:func:`sentence_seed`): the uniform number of step ``t`` is the stream's ``t``-th,
and the token is found by inverting the cumulative distribution, so what a sentence draws does
not depend on the batch it is in or the worker thread that searches it.

The score reported for a sample is its log-probability under the model itself (no temperature,
no cut), as search reports it, so that samples and search outputs compare.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from nmt.decode.search import Chooser, Decoder, Hypothesis, greedy_search


def sentence_seed(seed: int, line: int) -> int:
    """A 63-bit seed for the sentence on ``line`` (1-based) of a call seeded with ``seed``;
    numpy's ``SeedSequence`` mixes the two, so nearby seeds or lines give unrelated streams."""
    state = np.random.SeedSequence([seed, line]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def fresh_seed() -> int:
    """A random seed for a call that gave none."""
    return secrets.randbits(63)


def uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """``(len(seeds), steps)`` float64 uniform numbers in [0, 1): row ``i`` is the start of
    the stream seeded with ``seeds[i]``, the same whatever else is drawn."""
    rows = [
        torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s in seeds
    ]
    return torch.stack(rows)


def sampling_probs(logp: torch.Tensor, topk: int, topp: float, temperature: float) -> torch.Tensor:
    """The distribution to sample from.

    Args:
        logp: ``(rows, vocab)`` log-probabilities (``-inf`` for forbidden tokens).
        topk: keep the ``topk`` most probable tokens (0 = all; tokens tied with the
            ``topk``-th are kept too).
        topp: then keep the smallest set of most probable tokens whose probability (after
            the temperature and top-k) reaches ``topp`` (1 = all).
        temperature: divides the log-probabilities first (> 0).

    Returns:
        ``(rows, vocab)`` float64 probabilities, 0 outside the kept tokens, rows summing to 1.
    """
    probs = torch.softmax(logp.double() / temperature, dim=-1)
    if 0 < topk < probs.size(-1):
        kth = probs.topk(topk, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    if topp < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more probable tokens
        drop_sorted = before >= topp  # the set already reached p without this token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Invert each row's cumulative distribution at ``u``.

    Args:
        probs: ``(rows, vocab)`` probabilities; u: ``(rows,)`` float64 uniforms in [0, 1).

    Returns:
        ``(rows,)`` int64: the token ``i`` with ``cdf[i - 1] <= u < cdf[i]``, never one of
        probability 0.
    """
    cdf = probs.cumsum(-1)
    target = (u * cdf[:, -1]).to(cdf.dtype)[:, None]
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0]
    # u * total can round up to total: take the last token with probability then.
    last = probs.size(-1) - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1)
    return torch.minimum(tokens, last)


def sample_chooser(
    seeds: list[int], steps: int, topk: int, topp: float, temperature: float
) -> Chooser:
    """A :data:`nmt.decode.search.Chooser` that samples: row ``r`` of sentence ``s`` at step ``t``
    draws with the ``t``-th uniform of ``seeds[s]``'s stream (``steps`` of them)."""
    u = uniforms(seeds, steps)

    def choose(logp: torch.Tensor, sentence: torch.Tensor, step: int) -> torch.Tensor:
        probs = sampling_probs(logp, topk, topp, temperature)
        return draw(probs, u[sentence.cpu(), step].to(probs.device))

    return choose


@torch.inference_mode()
def sample(
    model: Decoder,
    src: torch.Tensor,
    seeds: list[int],
    topk: int = 0,
    topp: float = 1.0,
    temperature: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    prefix: torch.Tensor | None = None,
) -> list[Hypothesis]:
    """Draw one output per sentence (arguments as :func:`sampling_probs`).

    Args:
        src: ``(batch, src_len)`` int64 source ids ending in EOS, right-padded.
        seeds: each sentence's seed (:func:`sentence_seed`).
        prefix: ``(batch, prefix_len)`` target prefixes, teacher-forced before sampling.

    Returns:
        One :class:`~nmt.decode.search.Hypothesis` per sentence, its score the model's own
        log-probability of the output and EOS.
    """
    choose = sample_chooser(seeds, model.cfg.max_positions, topk, topp, temperature)
    return greedy_search(model, src, max_len_a, max_len_b, prefix, choose)
