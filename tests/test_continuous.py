"""nmt.continuous: a beam search that new sentences join while it runs.

A sentence searched alone is exactly beam_search's; sentences that join at other steps find
what each finds alone (within float32 rounding: agreement.py), report their teacher-forced
log-probability (a wrong position or mask for a joiner would change it), keep their own
length limits, penalties and target prefixes, and the padding columns are dropped once
nobody needs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from agreement import assert_float32_agree, forced_log_probs

from nmt.cache import DecoderCache
from nmt.checkpoint import SPM_FILE, load_model
from nmt.continuous import ContinuousBeamSearch
from nmt.data import pad
from nmt.model import Transformer
from nmt.search import Hypothesis, beam_search, length_penalty, max_lengths, prefix_tensor
from nmt.tokenizer import EOS_ID, Tokenizer


@pytest.fixture(scope="module")
def trained(tiny_run: Path) -> tuple[Transformer, Tokenizer]:
    model, _ = load_model(tiny_run)
    return model.eval(), Tokenizer(tiny_run / SPM_FILE)


@pytest.fixture(scope="module")
def sources(trained: tuple[Transformer, Tokenizer], multi30k) -> list[list[int]]:
    """Token ids of 16 Multi30k test sentences of various lengths."""
    return trained[1].encode(multi30k("test_2016_flickr", "de", 16))


def forced_score(model: Transformer, ids: list[int], tokens: list[int]) -> float:
    """log P(tokens + EOS | ids), teacher-forced."""
    logp = forced_log_probs(model, ids, tokens)
    return float(logp.gather(1, torch.tensor([*tokens, EOS_ID])[:, None]).sum())


def alone(model: Transformer, ids: list[int], **kw) -> list[Hypothesis]:  # type: ignore[no-untyped-def]
    prefix = kw.pop("prefix", None)
    src = pad([ids], suffix=EOS_ID)
    p = None if prefix is None else prefix_tensor([prefix], src.device)
    return beam_search(model, src, prefix=p, **kw)[0]


def staggered(
    search: ContinuousBeamSearch,
    sources: list[list[int]],
    prefixes: list[list[int]] | None = None,
    widths: list[int] | None = None,
) -> dict[int, list[Hypothesis]]:
    """Feed ``sources`` 0, 1, 2 or 3 at a time between steps (a fixed pattern); return
    each source's hypotheses by index, and record the widest history seen in ``widths``."""
    pattern, queue, owner, found = [2, 0, 1, 3, 0, 0, 1], list(range(len(sources))), {}, {}
    step = 0
    while queue or search.live:
        take, queue = queue[: pattern[step % len(pattern)]], queue[pattern[step % len(pattern)] :]
        if take:
            p = None if prefixes is None else [prefixes[i] for i in take]
            for sentence, i in zip(search.add([sources[i] for i in take], p), take):
                owner[sentence] = i
        search.step()
        step += 1
        if widths is not None and search.state is not None:
            widths.append(search.state.history.size(1))
        for sentence, hyps in search.done():
            found[owner[sentence]] = hyps
    return found


def test_a_sentence_alone_is_exactly_beam_search(trained, sources) -> None:
    model, _ = trained
    for ids in sources[:4]:
        search = ContinuousBeamSearch(model, 5, 1.0, nbest=3)
        (sentence,) = search.add([ids])
        while search.live:
            search.step()
        ((done, hyps),) = search.done()
        assert done == sentence
        assert hyps == alone(model, ids, beam_size=5, nbest=3)


@pytest.mark.kernels
@pytest.mark.parametrize("a, b", [(1.5, 10), (0.5, 1)])
def test_joined_sentences_find_what_each_finds_alone(trained, sources, a: float, b: int) -> None:
    """At (0.5, 1) most outputs end at their own length limit, which joiners must count from
    their own first step; each reported score is the output's teacher-forced
    log-probability, and ``normalized`` divides it by the penalty of its own length."""
    model, _ = trained
    widths: list[int] = []
    search = ContinuousBeamSearch(model, 5, 1.0, a, b, nbest=5)
    found = staggered(search, sources, widths=widths)
    assert sorted(found) == list(range(len(sources))) and search.live == 0
    together = {tuple(s): found[i] for i, s in enumerate(sources)}
    each = {
        tuple(s): alone(model, s, beam_size=5, max_len_a=a, max_len_b=b, nbest=5) for s in sources
    }
    assert_float32_agree(model, 5, together, each)
    limits = max_lengths(pad(sources, suffix=EOS_ID), a, b, model.cfg.max_positions - 1).tolist()
    at_limit = 0
    for i, ids in enumerate(sources):
        assert len(found[i]) == 5
        for h in found[i]:
            assert len(h.tokens) <= limits[i]
            at_limit += len(h.tokens) == limits[i]
            assert h.score == pytest.approx(forced_score(model, ids, h.tokens), abs=1e-4)
            assert h.normalized == pytest.approx(h.score / length_penalty(len(h.tokens) + 1, 1.0))
    if a < 1:
        assert at_limit >= len(sources)
    # Columns that only finished sentences used are dropped: the history never grows
    # beyond the longest output plus the steps of sentences still running beside it.
    assert max(widths) <= max(limits) + 1 + max(limits)
    assert widths[-1] <= max(limits) + 1


@pytest.mark.kernels
def test_joined_sentences_keep_their_target_prefixes(trained, sources, multi30k) -> None:
    model, tokenizer = trained
    refs = multi30k("test_2016_flickr", "en", len(sources))
    prefixes = [
        tokenizer.encode_target([" ".join(r.split()[:2])])[0] if i % 2 else []
        for i, r in enumerate(refs)
    ]
    search = ContinuousBeamSearch(model, 4, 1.0)
    found = staggered(search, sources, prefixes)
    for i, ids in enumerate(sources):
        (h,) = found[i]
        assert h.tokens[: len(prefixes[i])] == prefixes[i]
        assert h.score == pytest.approx(forced_score(model, ids, h.tokens), abs=1e-4)
        (ref,) = alone(model, ids, beam_size=4, prefix=prefixes[i])
        assert abs(h.normalized - ref.normalized) <= 0.05


def test_cache_merge_pads_sources_and_masks_the_joiners_columns(random_model) -> None:
    model = random_model()
    short, long = torch.tensor([[5, 6, 2]]), torch.tensor([[7, 8, 9, 10, 2]])
    with torch.inference_mode():
        running = model.init_cache(*model.encode(short), rows_per_sentence=2)
        for token in (1, 5, 6):
            model.decode_step(torch.full((2,), token), running)
        joiner = model.init_cache(*model.encode(long), rows_per_sentence=2)
        model.decode_step(torch.full((2,), 1), joiner)
        running.merge(joiner)
    assert running.rows == 4 and running.step == 3
    assert running.start is not None and running.start.tolist() == [0, 0, 2, 2]
    assert running.src_mask[:, 0, 0].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    mask = running.self_mask()
    assert mask is not None and mask.shape == (4, 1, 1, 4)
    assert torch.isinf(mask[2:, 0, 0, :2]).all() and (mask[2:, 0, 0, 2:] == 0).all()
    assert (mask[:2] == 0).all()
    with pytest.raises(ValueError, match="rows per sentence"):
        running.merge(DecoderCache(joiner.layers, joiner.src_mask, rows_per_sentence=1, step=1))
