"""nmt.decode.search and nmt.decode.beam: greedy and beam search.

A hand-scripted decoder whose results are worked out by hand, beam 1 = greedy, batch
invariance, reported score = forced-decoding score, length limits and n-best order.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from agreement import assert_float32_agree, inject_bf16_log_probs

import nmt.decode.beam as beam
import nmt.decode.search as search
from nmt.data.parallel import pad
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from nmt.decode.beam import beam_search
from nmt.decode.search import (
    Hypothesis,
    greedy_search,
    length_penalty,
    max_lengths,
    prefix_tensor,
)
from nmt.model.checkpoint import SPM_FILE, load_model
from nmt.model.transformer import Transformer

# --- a hand-scripted decoder ------------------------------------------------------------------

A, B, C = 4, 5, 6
SCRIPTED_VOCAB = 7

# Next-token probabilities by prefix (the tokens after BOS); any token not listed has
# probability 0. Sentence 0 follows TABLE; sentence 1 never ends (NEVER_ENDS).
TABLE = {
    (): {A: 0.5, B: 0.45, EOS_ID: 0.05},
    (A,): {EOS_ID: 0.4, A: 0.35, C: 0.25},
    (B,): {EOS_ID: 0.52, C: 0.48},
    (A, A): {EOS_ID: 1.0},
    (B, C): {EOS_ID: 1.0},
}
NEVER_ENDS = {A: 0.6, B: 0.4}
# After its first token, sentence 1 also gives EOS this probability (the table need not sum
# to 1): far below A and B, so search never ends it before its limit, where EOS is forced
# and the hypothesis gets this log-probability, not a free EOS (log 1 = 0).
LATE_EOS = 0.01
#
# Greedy: A (0.5), then EOS (0.4): [A], P = 0.5 * 0.4 = 0.2.
#
# Beam 2 (2 x beam = 4 candidates per step; only EOS among the top `beam` finishes):
#   step 1, only beam 0 is live: A .5, B .45, EOS .05 -> no EOS in the top 2; beams A, B.
#   step 2: B+EOS .234, B+C .216, A+EOS .200, A+A .175, A+C .125.
#           top 2 = B+EOS, B+C: [B] finishes (P .234, 2 tokens with EOS). A+EOS is only 3rd,
#           so it does not finish. The beams go on with B+C (.216) and A+A (.175).
#   step 3: B+C+EOS .216, A+A+EOS .175, both EOS in the top 2: [B, C] finishes second, and
#           the sentence is done with 2 = beam finished hypotheses (A+A+EOS is not kept).
# Finished: [B] log .234 = -1.4524 (length 2), [B, C] log .216 = -1.5325 (length 3).
#   alpha 0 ranks by log P: [B] wins, and beats greedy's [A] (P .234 > .2).
#   alpha 1, lp = (5 + len) / 6: [B] -1.4524 / (7/6) = -1.2449, [B, C] -1.5325 / (8/6) =
#   -1.1494: the length penalty flips the winner to [B, C].
# Beam 1 keeps A after step 1 (top 1) and finishes A+EOS at step 2: the same as greedy.


class ScriptedCache:
    """Stand-in for DecoderCache: each row's sentence and the tokens it has been fed."""

    def __init__(self, sentence: list[int]):
        self.sentence = sentence
        self.prefixes: list[tuple[int, ...]] = [() for _ in sentence]
        self.step = 0

    def reorder(self, index: torch.Tensor, rows_per_sentence: int | None = None) -> None:
        rows = index.tolist()
        self.sentence = [self.sentence[i] for i in rows]
        self.prefixes = [self.prefixes[i] for i in rows]


class ScriptedModel:
    """What search.py uses of a Transformer, with next-token tables instead of a network.

    The first source token picks the sentence's table: 0 → ``TABLE``, 1 → ``NEVER_ENDS``.
    """

    def __init__(self, max_positions: int = 64):
        self.cfg = SimpleNamespace(
            max_positions=max_positions, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID
        )

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return src[:, :1, None].float(), (src != PAD_ID)[:, None, None, :]

    def init_cache(
        self, memory: torch.Tensor, src_mask: torch.Tensor, rows_per_sentence: int = 1
    ) -> ScriptedCache:
        """``rows_per_sentence`` adjacent rows per sentence, as Transformer.init_cache."""
        rows = memory[:, 0, 0].long().repeat_interleave(rows_per_sentence)
        return ScriptedCache(rows.tolist())

    def decode_step(self, tokens: torch.Tensor, cache: ScriptedCache) -> torch.Tensor:
        out = torch.full((tokens.numel(), SCRIPTED_VOCAB), float("-inf"))
        for row, token in enumerate(tokens.tolist()):
            if cache.step == 0:
                assert token == BOS_ID
            else:
                cache.prefixes[row] += (token,)
            if cache.sentence[row] == 0:
                probs = TABLE.get(cache.prefixes[row], {EOS_ID: 1.0})
            elif cache.prefixes[row]:
                probs = {**NEVER_ENDS, EOS_ID: LATE_EOS}
            else:
                probs = NEVER_ENDS
            for t, p in probs.items():
                out[row, t] = math.log(p)
        cache.step += 1
        return out


def scripted_src(*sentences: tuple[int, int]) -> torch.Tensor:
    """Sources ``(table, n_tokens)``: the table id, then filler, then EOS; padded."""
    rows = [[table] + [A] * (n - 1) for table, n in sentences]
    return pad(rows, suffix=EOS_ID)


# Search's scores against the values worked out by hand above (float64 logarithms): search
# adds float32 log-probabilities, one rounding of ~6e-8 each, so the 1-3 steps of TABLE stay
# within HAND_TOL and the 5-10 steps to a length limit within LONG_HAND_TOL. The companions:
# log-probabilities rounded to bfloat16 (a cast left in) and the EOS forced at the limit
# given for free (log 1 = 0 instead of log LATE_EOS) (tests/README.md).
HAND_TOL, LONG_HAND_TOL = 1e-6, 1e-5
Scores = tuple[list[float], list[float]]  # (search's, worked out by hand)


def assert_hand_scores(got: list[float], want: list[float], tol: float) -> None:
    """Search's scores ``got`` within ``tol`` of the hand-worked ``want``; prints the gap."""
    gap = max(abs(g - w) for g, w in zip(got, want, strict=True))
    print(f"search vs hand-worked scores: gap {gap:.2g} (tol {tol:g})")
    assert gap <= tol, f"scores {got} vs hand-worked {want}: {gap:.3g} apart, beyond {tol:g}"


def greedy_scores(model: ScriptedModel) -> Scores:
    """Greedy on sentence 0: [A], P = 0.2 (score and normalized score)."""
    [hyp] = greedy_search(model, scripted_src((0, 3)))
    assert hyp.tokens == [A]
    return [hyp.score, hyp.normalized], [math.log(0.2)] * 2


def beam_2_scores(model: ScriptedModel) -> Scores:
    """Beam 2 on sentence 0, alpha 0 then 1: the winners and their scores worked out above
    (the length penalty flips the winner)."""
    src = scripted_src((0, 3))
    [[raw, raw_second]] = beam_search(model, src, beam_size=2, length_penalty_alpha=0.0, nbest=2)
    assert raw.tokens == [B] and raw_second.tokens == [B, C]
    assert raw.score > math.log(0.2)  # greedy's [A]
    [[best, second]] = beam_search(model, src, beam_size=2, length_penalty_alpha=1.0, nbest=2)
    assert best.tokens == [B, C] and second.tokens == [B]
    got = [raw.score, raw_second.score, best.score, best.normalized, second.normalized]
    b, bc = math.log(0.234), math.log(0.216)
    return got, [b, bc, bc, bc / (8 / 6), b / (7 / 6)]


def beam_1_scores(model: ScriptedModel) -> Scores:
    """Beam 1 on sentence 0: greedy's [A], P = 0.2."""
    [[hyp]] = beam_search(model, scripted_src((0, 3)), beam_size=1)
    assert hyp.tokens == [A]
    return [hyp.score], [math.log(0.2)]


def limit_scores(model: ScriptedModel, beam_size: int) -> Scores:
    """Sentences that never end, of lengths 4 and 1 (EOS not counted): limits int(1.5 * 4)
    + 3 = 9 and int(1.5 * 1) + 3 = 4 tokens, then EOS forced with its own log-probability."""
    src = scripted_src((1, 4), (1, 1))
    assert max_lengths(src, 1.5, 3, cap=100).tolist() == [9, 4]
    if beam_size == 1:
        hyps = greedy_search(model, src, max_len_a=1.5, max_len_b=3)
    else:
        hyps = [h[0] for h in beam_search(model, src, beam_size, 0.0, 1.5, 3)]
    assert [h.tokens for h in hyps] == [[A] * 9, [A] * 4]
    want = [n * math.log(0.6) + math.log(LATE_EOS) for n in (9, 4)]
    return [h.score for h in hyps], want


def test_scripted_greedy() -> None:
    assert_hand_scores(*greedy_scores(ScriptedModel()), HAND_TOL)


def test_scripted_beam_2_beats_greedy_and_length_penalty_flips_the_winner() -> None:
    assert_hand_scores(*beam_2_scores(ScriptedModel()), HAND_TOL)


def test_scripted_beam_1_is_greedy() -> None:
    assert_hand_scores(*beam_1_scores(ScriptedModel()), HAND_TOL)


@pytest.mark.parametrize("beam_size", [1, 2, 3])
def test_model_that_never_ends_stops_at_a_times_src_len_plus_b(beam_size: int) -> None:
    assert_hand_scores(*limit_scores(ScriptedModel(), beam_size), LONG_HAND_TOL)


@pytest.mark.parametrize("scores", [greedy_scores, beam_2_scores, beam_1_scores])
def test_hand_bound_fails_log_probs_rounded_to_bf16(
    scores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HAND_TOL's companion: the same outputs, but each step's log-probabilities rounded to
    bfloat16 (a cast left in) before search adds them."""
    model = ScriptedModel()
    inject_bf16_log_probs(monkeypatch, model)
    with pytest.raises(AssertionError, match="beyond"):
        assert_hand_scores(*scores(model), HAND_TOL)


def free_eos_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug ``search.only_eos`` guards against: a row at its length limit ends with EOS
    for free (log 1 = 0), not with the model's log-probability of EOS."""

    def free(logp: torch.Tensor, eos_id: int = EOS_ID) -> torch.Tensor:
        forced = torch.full_like(logp, float("-inf"))
        forced[:, eos_id] = 0.0
        return forced

    monkeypatch.setattr(search, "only_eos", free)
    monkeypatch.setattr(beam, "only_eos", free)  # beam search imports it by name


@pytest.mark.parametrize("beam_size", [1, 3])
def test_long_hand_bound_fails_a_free_eos_at_the_limit(
    beam_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LONG_HAND_TOL's companion: the EOS forced at the limit given for free."""
    free_eos_at_the_limit(monkeypatch)
    with pytest.raises(AssertionError, match="beyond"):
        assert_hand_scores(*limit_scores(ScriptedModel(), beam_size), LONG_HAND_TOL)


def test_length_limit_is_capped_by_the_position_table() -> None:
    model = ScriptedModel(max_positions=6)  # BOS + 5 tokens at most
    [hyp] = greedy_search(model, scripted_src((1, 8)), max_len_a=2.0, max_len_b=10)
    assert hyp.tokens == [A] * 5
    [[hyp]] = beam_search(model, scripted_src((1, 8)), 3, 1.0, 2.0, 10)
    assert hyp.tokens == [A] * 5


def test_scripted_nbest_order_and_scores() -> None:
    # Never-ending sentence, beam 3, limit 4: the best is AAAA; the next ones have one B
    # (0.6^3 * 0.4 each, several ties) and rank below it.
    [hyps] = beam_search(ScriptedModel(), scripted_src((1, 1)), 3, 1.0, 1.0, 3, nbest=3)
    assert len(hyps) == 3 and hyps[0].tokens == [A] * 4
    end = math.log(LATE_EOS)
    want = [4 * math.log(0.6) + end] + 2 * [3 * math.log(0.6) + math.log(0.4) + end]
    assert_hand_scores([h.score for h in hyps], want, LONG_HAND_TOL)
    assert all(h.tokens.count(B) == 1 for h in hyps[1:]) and hyps[1].tokens != hyps[2].tokens


def test_scripted_batch_equals_each_alone() -> None:
    # Sentence 0 finishes after 3 steps and leaves the batch; sentence 1 runs to its limit.
    src = scripted_src((0, 3), (1, 6), (0, 2))
    together = beam_search(ScriptedModel(), src, 2, 1.0, 1.5, 3, nbest=2)
    for row in range(3):
        alone = beam_search(ScriptedModel(), src[row : row + 1], 2, 1.0, 1.5, 3, nbest=2)
        assert together[row] == alone[0]
    assert [h.tokens for h in together[0]] == [[B, C], [B]]


def test_length_penalty_formula() -> None:
    assert length_penalty(1, 1.0) == 1.0
    assert length_penalty(7, 1.0) == 2.0
    assert length_penalty(7, 0.0) == 1.0
    assert length_penalty(7, 0.5) == pytest.approx(math.sqrt(2))


# --- a random model ---------------------------------------------------------------------------


def random_src(lengths: list[int], vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return pad(
        [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths], suffix=EOS_ID
    )


@pytest.mark.kernels
def test_beam_1_equals_greedy_on_a_random_model(random_model) -> None:
    model = random_model()
    with torch.no_grad():  # wider weights: some sentences end early, some hit the limit
        for p in model.parameters():
            p.normal_(0, 0.5)
    src = random_src([3, 7, 5, 10, 1, 4, 8, 2], model.cfg.vocab_size)
    greedy = greedy_search(model, src)
    beam = beam_search(model, src, beam_size=1)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
    assert [h.score for h in greedy] == pytest.approx([b[0].score for b in beam], abs=1e-5)


# --- the trained tiny model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_run: Path) -> tuple[Transformer, Tokenizer]:
    model, _ = load_model(tiny_run)
    return model, Tokenizer(tiny_run / SPM_FILE)


@pytest.fixture(scope="module")
def sources(trained: tuple[Transformer, Tokenizer], multi30k) -> list[list[int]]:
    """Token ids of 12 Multi30k test sentences of various lengths."""
    return trained[1].encode(multi30k("test_2016_flickr", "de", 12))


def batch(ids: list[list[int]]) -> torch.Tensor:
    return pad(ids, suffix=EOS_ID)


@pytest.mark.kernels
def test_beam_1_equals_greedy_on_the_trained_model(trained, sources) -> None:
    """Exact on any CPU: the same batch and the same decoder steps (a sentence leaves both
    searches at the step it ends), so the same arithmetic."""
    model, _ = trained
    greedy = greedy_search(model, batch(sources))
    beam = beam_search(model, batch(sources), beam_size=1)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
    assert [h.score for h in greedy] == pytest.approx([b[0].score for b in beam], abs=1e-5)
    assert len({len(h.tokens) for h in greedy}) > 3  # real, varied outputs


@pytest.mark.kernels
@pytest.mark.parametrize("beam_size", [1, 5])
def test_batch_equals_each_sentence_alone(trained, sources, beam_size: int) -> None:
    """Padding and the batch's shapes may change the rounding (on some CPUs), so outputs may
    differ where two candidates were within float32 rounding (``agreement.py``)."""
    model, _ = trained

    def search(src: torch.Tensor) -> list[list[Hypothesis]]:
        if beam_size == 1:
            return [[h] for h in greedy_search(model, src)]
        return beam_search(model, src, beam_size)

    together = dict(zip(map(tuple, sources), search(batch(sources))))
    alone = {tuple(ids): search(batch([ids]))[0] for ids in sources}
    assert_float32_agree(model, beam_size, together, alone)


def forced_log_prob(model: Transformer, src_ids: list[int], tokens: list[int]) -> float:
    """log P(tokens + EOS | src) by teacher-forced decoding of the whole output at once."""
    with torch.no_grad():
        memory, src_mask = model.encode(batch([src_ids]))
        tgt_in = torch.tensor([[BOS_ID, *tokens]])
        labels = torch.tensor([*tokens, EOS_ID])
        logp = F.log_softmax(model.logits(model.decode(tgt_in, memory, src_mask))[0].float(), -1)
        return float(logp.gather(1, labels[:, None]).sum())


# The score search reports (summed step by step from the cached decoder) against the
# forced-decoding log-probability of the same output (the whole prefix at once): two float32
# paths, compared per token (EOS counted) as agreement.py's SCORE_TOL. Measured 5.2e-7 per
# token (Zen 3); its companions, the EOS forced at a length limit or a target prefix given
# for free, 0.9 and 0.99 per token (tests/README.md).
SEARCH_FORCED_TOL = 1e-4  # per token


def assert_scores_are_forced(
    model: Transformer, sources: list[list[int]], found: list[list[Hypothesis]]
) -> None:
    """Every hypothesis of ``found`` (per source of ``sources``) scores its forced-decoding
    log-probability within SEARCH_FORCED_TOL per token (EOS counted); prints the largest
    gap per token."""
    gaps = [
        abs(h.score - forced_log_prob(model, ids, h.tokens)) / (len(h.tokens) + 1)
        for ids, hyps in zip(sources, found, strict=True)
        for h in hyps
    ]
    print(f"search vs forced scores: gap {max(gaps):.2g}/token (tol {SEARCH_FORCED_TOL:g})")
    bad = sum(g > SEARCH_FORCED_TOL for g in gaps)
    assert not bad, f"{bad} of {len(gaps)} scores beyond {SEARCH_FORCED_TOL:g}/token of forced"


@pytest.mark.kernels
def test_reported_score_is_the_forced_decoding_log_probability(trained, sources) -> None:
    """Also for hypotheses cut at the length limit (a = 0.5, b = 1 cuts most of them): EOS is
    forced there with the model's own log-probability, not for free."""
    model, _ = trained
    src = batch(sources)
    at_limit = 0
    for a, b in ((2.0, 20), (0.5, 1)):
        limits = max_lengths(src, a, b, model.cfg.max_positions - 1).tolist()
        nbest = beam_search(model, src, 5, 1.0, a, b, nbest=5)
        greedy = greedy_search(model, src, a, b)
        assert all(len(hyps) == 5 for hyps in nbest)
        assert_scores_are_forced(model, sources, [[*hyps, h1] for hyps, h1 in zip(nbest, greedy)])
        for hyps, h1, limit in zip(nbest, greedy, limits):
            at_limit += sum(len(h.tokens) == limit for h in [*hyps, h1])
            for h in hyps:
                lp = length_penalty(len(h.tokens) + 1, 1)
                assert h.normalized == pytest.approx(h.score / lp)
    assert at_limit >= len(sources)


@pytest.mark.kernels
def test_forced_bound_fails_a_free_eos_at_the_limit(
    trained, sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEARCH_FORCED_TOL's companion: greedy outputs cut at the limit (a = 0.5, b = 1) whose
    forced EOS is given for free."""
    model, _ = trained
    free_eos_at_the_limit(monkeypatch)
    greedy = greedy_search(model, batch(sources), 0.5, 1)
    with pytest.raises(AssertionError, match="beyond"):
        assert_scores_are_forced(model, sources, [[h] for h in greedy])


@pytest.mark.kernels
def test_nbest_is_ordered_distinct_and_starts_with_the_1best(trained, sources) -> None:
    model, _ = trained
    src = batch(sources)
    nbest = beam_search(model, src, 5, 1.0, nbest=5)
    best = beam_search(model, src, 5, 1.0, nbest=1)
    for hyps, [top] in zip(nbest, best):
        assert len(hyps) == 5
        assert hyps[0] == top
        scores = [h.normalized for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 5


# --- target prefixes --------------------------------------------------------------------------


def reference_prefixes(tokenizer: Tokenizer, refs: list[str]) -> list[list[int]]:
    """The first 1-4 words of each reference as a target prefix; none for every third."""
    return [
        [] if i % 3 == 0 else tokenizer.encode([" ".join(ref.split()[: 1 + i % 4])])[0]
        for i, ref in enumerate(refs)
    ]


@pytest.mark.kernels
@pytest.mark.parametrize("beam_size", [1, 4])
def test_prefix_is_forced_and_the_score_is_the_forced_decoding_score(
    trained, sources, multi30k, beam_size: int
) -> None:
    """Each output starts with its sentence's prefix (the first words of the reference, which
    the model would not produce by itself), the search continues after it, and the reported
    score is the forced-decoding log-probability of prefix + continuation + EOS: the prefix's
    own tokens are scored, not given for free. Sentences without a prefix (every third) are
    searched as they would be without any prefixes in the batch."""
    model, tokenizer = trained
    prefixes = reference_prefixes(tokenizer, multi30k("test_2016_flickr", "en", len(sources)))
    src = batch(sources)
    prefix = prefix_tensor(prefixes, src.device)
    if beam_size == 1:
        found = [[h] for h in greedy_search(model, src, 2.0, 20, prefix)]
        plain = [[h] for h in greedy_search(model, src, 2.0, 20)]
    else:
        found = beam_search(model, src, beam_size, 1.0, 2.0, 20, prefix=prefix)
        plain = beam_search(model, src, beam_size, 1.0, 2.0, 20)
    continued = 0
    for p, hyps in zip(prefixes, found):
        h = hyps[0]
        assert h.tokens[: len(p)] == p
        continued += len(h.tokens) > len(p)
    assert_scores_are_forced(model, sources, [hyps[:1] for hyps in found])
    assert continued >= 0.8 * len(sources)
    assert sum(bool(p) for p in prefixes) >= 7
    free = [i for i, p in enumerate(prefixes) if not p]
    as_plain = {tuple(sources[i]): plain[i] for i in free}
    as_prefixed = {tuple(sources[i]): found[i] for i in free}
    assert_float32_agree(model, beam_size, as_plain, as_prefixed)


@pytest.mark.kernels
def test_forced_bound_fails_a_prefix_given_for_free(
    trained, sources, multi30k, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEARCH_FORCED_TOL's companion for prefixes: a search that forces the prefix tokens
    with log-probability 0 (given for free) instead of the model's own."""
    model, tokenizer = trained
    prefixes = reference_prefixes(tokenizer, multi30k("test_2016_flickr", "en", len(sources)))

    def for_free(logp: torch.Tensor, tokens: torch.Tensor) -> None:
        rows = (tokens >= 0).nonzero()[:, 0]
        logp[rows] = float("-inf")
        logp[rows, tokens[rows]] = 0.0

    monkeypatch.setattr(search, "force_tokens", for_free)
    found = greedy_search(
        model, batch(sources), 2.0, 20, prefix_tensor(prefixes, torch.device("cpu"))
    )
    with pytest.raises(AssertionError, match="beyond"):
        assert_scores_are_forced(model, sources, [[h] for h in found])


def test_prefix_tensor() -> None:
    assert prefix_tensor([[], []], torch.device("cpu")) is None
    t = prefix_tensor([[4, 5], [], [6]], torch.device("cpu"))
    assert t is not None and t.tolist() == [[4, 5], [-1, -1], [6, -1]]
