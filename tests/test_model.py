"""nmt.model.transformer: incremental decoding equals full decoding, causality, padding,
cache reordering."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
import torch
import torch.nn.functional as F
from agreement import inject_padding_read

from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.model.cache import CACHE_CHUNK
from nmt.model.layers import sinusoidal_positions
from nmt.model.transformer import Transformer

VOCAB = 50

pytestmark = pytest.mark.kernels  # float32 equalities within tolerances, on every CPU

# Two float32 computations of the same numbers here (cached against full decoding, a padded
# batch against each sentence alone, a reordered cache against the reordered prefixes
# decoded afresh): summation order moves them by ~1e-6 at most (tests/README.md); each
# companion below injects a plausible bug (a dropped cache, a mask that lets padding or the
# future through, values left behind by a reorder) that moves them by 1e-2 and more.
MODEL_TOL = 1e-5  # log-probabilities (and encoder states), absolute
CAUSAL_TOL = 1e-6  # log-probabilities of the positions before a change: the same arithmetic


def padded_src(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """``(batch, max_len + 1)`` random source ids ending in EOS, right-padded with PAD."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths) + 1), PAD_ID, dtype=torch.long)
    for row, n in enumerate(lengths):
        src[row, :n] = torch.randint(4, VOCAB, (n,), generator=gen)
        src[row, n] = EOS_ID
    return src


def random_tgt(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """``(batch, length)`` decoder input: BOS then random ids."""
    gen = torch.Generator().manual_seed(seed)
    tgt = torch.randint(4, VOCAB, (batch, length), generator=gen)
    tgt[:, 0] = BOS_ID
    return tgt


def full_log_probs(model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """``(batch, tgt_len, vocab)`` log-probabilities from teacher-forced decoding."""
    memory, src_mask = model.encode(src)
    return F.log_softmax(model.logits(model.decode(tgt_in, memory, src_mask)).float(), -1)


def assert_close_pairs(
    what: str, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], tol: float = MODEL_TOL
) -> float:
    """Each ``(got, want)`` pair of same-shaped tensors within ``tol`` (absolute); prints and
    returns the largest difference (``pytest -s``): the check of every comparison here, and
    what its companion makes fail."""
    gap = 0.0
    for got, want in pairs:
        assert got.shape == want.shape, (what, got.shape, want.shape)
        gap = max(gap, float((got - want).abs().max()))
    print(f"{what}: largest difference {gap:.2g} (tol {tol:g})")
    assert gap <= tol, f"{what}: {gap:.3g} apart, beyond {tol:g}"
    return gap


def cached_log_probs(model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """The same, one incremental ``decode_step`` at a time."""
    memory, src_mask = model.encode(src)
    cache = model.init_cache(memory, src_mask)
    steps = [model.decode_step(tgt_in[:, t], cache) for t in range(tgt_in.size(1))]
    assert cache.step == tgt_in.size(1)
    return torch.stack(steps, 1)


@pytest.mark.parametrize("pre_norm", [True, False], ids=["pre-norm", "post-norm"])
@torch.no_grad()
def test_cached_decoding_equals_full_decoding(random_model, pre_norm: bool) -> None:
    model = random_model(pre_norm=pre_norm)
    src = padded_src([7, 3, 11, 1])
    tgt_in = random_tgt(4, 2 * CACHE_CHUNK + 3)  # the self-attention cache grows twice
    full = full_log_probs(model, src, tgt_in)
    cached = cached_log_probs(model, src, tgt_in)
    assert cached.dtype == torch.float32 and cached.shape == (4, tgt_in.size(1), VOCAB)
    assert_close_pairs("cached vs full", [(cached, full)])


def check_causal(model: Transformer) -> None:
    """Target tokens changed from position 5 on leave the log-probabilities of positions
    0-4 as they were (within :data:`CAUSAL_TOL`), and change the later ones."""
    src = padded_src([6, 9])
    tgt_in = random_tgt(2, 12)
    changed = tgt_in.clone()
    changed[:, 5:] = random_tgt(2, 12, seed=7)[:, 5:]
    assert not torch.equal(changed, tgt_in)
    before, after = full_log_probs(model, src, tgt_in), full_log_probs(model, src, changed)
    assert not torch.allclose(after[:, 5:], before[:, 5:])  # later positions do see them
    assert_close_pairs("positions before the change", [(after[:, :5], before[:, :5])], CAUSAL_TOL)


@torch.no_grad()
def test_decoder_is_causal(random_model) -> None:
    check_causal(random_model())


def check_source_padding(model: Transformer) -> None:
    """One sentence alone and followed by 9 pads: the same encoder states at its positions
    and the same log-probabilities, full and cached, within :data:`MODEL_TOL`."""
    src = padded_src([5])  # (1, 6)
    padded = torch.cat([src, torch.full((1, 9), PAD_ID)], 1)  # the same sentence, 9 pads more
    tgt_in = random_tgt(1, 8)
    memory, _ = model.encode(src)
    padded_memory, _ = model.encode(padded)
    assert_close_pairs(
        "a sentence with 9 pads vs alone",
        [
            (padded_memory[:, :6], memory),
            (full_log_probs(model, padded, tgt_in), full_log_probs(model, src, tgt_in)),
            (cached_log_probs(model, padded, tgt_in), cached_log_probs(model, src, tgt_in)),
        ],
    )


@torch.no_grad()
def test_source_padding_changes_nothing(random_model) -> None:
    check_source_padding(random_model())


def check_padded_batch(model: Transformer) -> None:
    """A batch of 3 sentences of lengths 2, 9, 5 (padded to 9): each row's log-probabilities
    within :data:`MODEL_TOL` of the sentence decoded alone."""
    lengths = [2, 9, 5]
    src = padded_src(lengths)
    tgt_in = random_tgt(3, 6)
    batch = full_log_probs(model, src, tgt_in)
    alone = [
        full_log_probs(model, src[row : row + 1, : n + 1], tgt_in[row : row + 1])
        for row, n in enumerate(lengths)
    ]
    assert_close_pairs("padded batch vs alone", zip(batch.split(1), alone))


@torch.no_grad()
def test_padded_batch_equals_each_sentence_alone(random_model) -> None:
    check_padded_batch(random_model())


@torch.no_grad()
@pytest.mark.parametrize(
    "check", [check_source_padding, check_padded_batch], ids=["one-sentence", "batch"]
)
def test_padding_bounds_fail_a_cross_attention_that_reads_the_padding(
    random_model, monkeypatch: pytest.MonkeyPatch, check
) -> None:
    """Companion of MODEL_TOL for padding (tests/README.md): a wrong mask, the decoder's
    cross-attention reading the source padding (``encode``'s mask all True), moves the
    padded sentence's log-probabilities past the bound."""
    model = random_model()
    inject_padding_read(monkeypatch, model)
    with pytest.raises(AssertionError, match="beyond"):
        check(model)


@torch.no_grad()
def test_causal_bound_fails_a_self_attention_without_its_causal_mask(
    random_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Companion of CAUSAL_TOL: a decoder self-attention that drops its causal mask (every
    position sees the whole target) lets the changed tokens move the earlier positions."""
    from nmt.model.layers import MultiHeadAttention

    attend = MultiHeadAttention.attend

    def unmasked(self, q, k, v, mask, causal):  # type: ignore[no-untyped-def]
        return attend(self, q, k, v, mask, False)

    monkeypatch.setattr(MultiHeadAttention, "attend", unmasked)
    with pytest.raises(AssertionError, match="beyond"):
        check_causal(random_model())


@torch.no_grad()
def test_cache_reorder_selects_rows(random_model) -> None:
    model = random_model()
    src = padded_src([4, 7, 2])
    tgt_in = random_tgt(3, 5)
    memory, src_mask = model.encode(src)
    cache = model.init_cache(memory, src_mask)
    for t in range(3):
        model.decode_step(tgt_in[:, t], cache)
    index = torch.tensor([2, 0, 0, 1])
    before = [(layer.self_k.clone(), layer.cross_v.clone()) for layer in cache.layers]
    cache.reorder(index)
    for layer, (self_k, cross_v) in zip(cache.layers, before):
        assert torch.equal(layer.self_k, self_k[index])
        assert torch.equal(layer.cross_v, cross_v[index])
        assert layer.length == 3
    assert torch.equal(cache.src_mask, src_mask[index])
    # Going on from the reordered cache equals decoding the reordered batch from the start.
    reordered = cached_log_probs(model, src[index], tgt_in[index])
    pairs = [(model.decode_step(tgt_in[index, t], cache), reordered[:, t]) for t in range(3, 5)]
    assert_close_pairs("reordered cache vs the reordered batch", pairs)


def test_train_mode_dropout_is_random_eval_is_not(random_model) -> None:
    model = random_model(dropout=0.3)
    src, tgt_in = padded_src([6, 4]), random_tgt(2, 5)
    with torch.no_grad():
        assert torch.equal(model(src, tgt_in), model(src, tgt_in))
        model.train()
        assert not torch.equal(model(src, tgt_in), model(src, tgt_in))


def test_embeddings_are_tied_and_pad_is_zero(random_model) -> None:
    model = random_model()
    assert torch.equal(model.embed.weight[PAD_ID], torch.zeros(model.cfg.d_model))
    h = torch.randn(3, model.cfg.d_model)
    torch.testing.assert_close(model.logits(h), h @ model.embed.weight.T)
    vocab_by_width = [p for p in model.parameters() if p.shape == (VOCAB, model.cfg.d_model)]
    assert len(vocab_by_width) == 1  # one matrix: source, target and output embedding


def test_positions_and_length_limit(random_model) -> None:
    table = sinusoidal_positions(10, 8)
    assert table.shape == (10, 8)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0] * 4))
    model = random_model(max_positions=16)
    with pytest.raises(ValueError, match="exceeds max_positions=16"):
        model.encode(padded_src([16]))  # 17 tokens with EOS
    cache = model.init_cache(*model.encode(padded_src([3])))
    with torch.no_grad():
        for _ in range(16):
            model.decode_step(torch.tensor([BOS_ID]), cache)
        with pytest.raises(ValueError, match="17 tokens exceeds max_positions=16"):
            model.decode_step(torch.tensor([BOS_ID]), cache)


@torch.no_grad()
def test_beam_cache_equals_repeated_rows(random_model) -> None:
    """A cache that starts with one row per sentence (beam search's first step), widens to 3
    beams per sentence (cross-attention state shared by a sentence's beams) equals a plain
    cache over each sentence repeated 3 times, through beam reordering and the removal of a
    finished sentence."""
    model, beam = random_model(), 3
    src = padded_src([4, 7, 2])
    tokens = random_tgt(9, 6)
    tokens[:, 0] = tokens[::beam, 0].repeat_interleave(beam)  # all beams start alike
    memory, src_mask = model.encode(src)
    shared = model.init_cache(memory, src_mask)
    plain = model.init_cache(memory.repeat_interleave(beam, 0), src_mask.repeat_interleave(beam, 0))
    pairs = [
        (
            model.decode_step(tokens[::beam, 0], shared).repeat_interleave(beam, 0),
            model.decode_step(tokens[:, 0], plain),
        )
    ]
    shared.reorder(torch.arange(3).repeat_interleave(beam), rows_per_sentence=beam)
    assert shared.rows == 9 and shared.layers[0].cross_k.size(0) == 3
    for t in range(1, 6):
        if t == 2:  # move hypotheses between the beams of each sentence
            index = torch.tensor([2, 2, 0, 3, 5, 4, 8, 6, 6])
        elif t == 4:  # sentence 1 finished: drop its rows
            index = torch.tensor([0, 1, 2, 6, 7, 8])
        else:
            index = None
        if index is not None:
            shared.reorder(index)
            plain.reorder(index)
            tokens = tokens[index]
        pairs.append(
            (model.decode_step(tokens[:, t], shared), model.decode_step(tokens[:, t], plain))
        )
    assert shared.layers[0].cross_k.size(0) == 2 and plain.layers[0].cross_k.size(0) == 6
    assert_close_pairs("shared beam cache vs repeated rows", pairs)


def reordered_steps(model: Transformer, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Beam-style reorders at every step of ``steps`` (hypotheses moved and copied within
    each sentence's 3 beams; sentence 1 dropped after step ``CACHE_CHUNK + 5``): each
    step's cached log-probabilities and those of the rows' reordered token prefixes decoded
    from scratch, as ``(cached, full)`` pairs."""
    beam = 3
    src = padded_src([4, 7, 2]).repeat_interleave(beam, 0)  # (9, src_len), beams adjacent
    memory, src_mask = model.encode(src[::beam])
    cache = model.init_cache(memory, src_mask, rows_per_sentence=beam)
    gen = torch.Generator().manual_seed(3)
    history = torch.full((src.size(0), 1), BOS_ID)
    for t in range(steps):
        yield model.decode_step(history[:, -1], cache), full_log_probs(model, src, history)[:, -1]
        sentences = history.size(0) // beam
        index = torch.randint(0, beam, (history.size(0),), generator=gen)
        index += torch.arange(sentences).repeat_interleave(beam) * beam
        if t == CACHE_CHUNK + 5:  # sentence 1 finished: drop its rows
            index = torch.cat([index[:beam], index[2 * beam :]])
            src = torch.cat([src[:beam], src[2 * beam :]])
        cache.reorder(index)
        new = torch.randint(4, VOCAB, (index.numel(), 1), generator=gen)
        history = torch.cat([history[index], new], 1)


@torch.no_grad()
def test_reordered_cache_equals_recomputing_the_reordered_prefixes(random_model) -> None:
    """Beam-style reorders at every step, across two growths of the self-attention cache and
    the removal of a sentence: each step equals decoding the rows' reordered token prefixes
    from scratch."""
    pairs = reordered_steps(random_model(), 2 * CACHE_CHUNK + 2)
    assert_close_pairs("reordered cache vs the reordered prefixes", pairs)


@torch.no_grad()
def test_reorder_bound_fails_values_left_behind(
    random_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Companion of MODEL_TOL for cache reorders (tests/README.md): a reorder that moves the
    self-attention keys but leaves the values in their old rows (one of a pair forgotten)
    gives each moved hypothesis another's values, past the bound. (Run to before the step
    that drops a sentence, where the bug would fail on the shapes instead.)"""
    from nmt.model.cache import LayerCache

    def keys_only(self: LayerCache, index: torch.Tensor) -> None:
        if self.self_k is not None:
            self.self_k = self.self_k.index_select(0, index)

    monkeypatch.setattr(LayerCache, "reorder_rows", keys_only)
    pairs = reordered_steps(random_model(), CACHE_CHUNK + 5)
    with pytest.raises(AssertionError, match="beyond"):
        assert_close_pairs("reordered cache vs the reordered prefixes", pairs)


@torch.no_grad()
def test_cached_bound_fails_a_cache_that_forgets_on_growth(
    random_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Companion of the 1e-5 bound of cached against full decoding (tests/README.md): a
    self-attention cache that, when it grows by a chunk, drops what it held (the new chunk
    replaces the old keys and values instead of extending them) changes every step after
    the first growth, and the check fails."""
    from nmt.model.cache import LayerCache

    append = LayerCache.append

    def forgetting(self: LayerCache, k: torch.Tensor, v: torch.Tensor):  # type: ignore[no-untyped-def]
        if self.self_k is not None and self.length == self.self_k.size(2):
            self.self_k, self.self_v, self.length = None, None, 0
        return append(self, k, v)

    model = random_model()
    src, tgt_in = padded_src([7, 3, 11, 1]), random_tgt(4, 2 * CACHE_CHUNK + 3)
    full = full_log_probs(model, src, tgt_in)
    kernels = float((cached_log_probs(model, src, tgt_in) - full).abs().max())
    monkeypatch.setattr(LayerCache, "append", forgetting)
    bug = float((cached_log_probs(model, src, tgt_in) - full).abs().max())
    print(f"cached vs full: kernels {kernels:.2g}, bug {bug:.2g}")
    assert kernels <= MODEL_TOL < bug
