"""Token-based batching: which examples form each batch of an epoch.

Batches hold about ``batch_tokens`` padded tokens and are built from length-sorted buckets,
then shuffled (as in fairseq and OpenNMT-py), so that little compute is spent on padding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np


def make_batches(
    src_lens: Sequence[int] | np.ndarray,
    tgt_lens: Sequence[int] | np.ndarray,
    batch_tokens: int,
    seed: int,
) -> list[list[int]]:
    """Group example indices into batches of at most ``batch_tokens`` padded tokens.

    Examples are shuffled, sorted by (target, source) length so that neighbours have similar
    lengths, cut into batches whose ``n * max(src_len + 1, tgt_len + 1)`` stays within
    ``batch_tokens``, and the batch order is shuffled. Deterministic for a given ``seed``.

    Returns:
        Lists of example indices, one per batch.
    """
    rng = random.Random(seed)
    # Plain ints sort several times faster than numpy scalars.
    src_lens = src_lens.tolist() if isinstance(src_lens, np.ndarray) else src_lens
    tgt_lens = tgt_lens.tolist() if isinstance(tgt_lens, np.ndarray) else tgt_lens
    order = list(range(len(src_lens)))
    rng.shuffle(order)
    order.sort(key=lambda i: (tgt_lens[i], src_lens[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = max(src_lens[i], tgt_lens[i]) + 1  # + EOS / BOS
        if current and (len(current) + 1) * max(longest, length) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches
