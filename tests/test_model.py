"""nmt.model.transformer: incremental decoding equals full decoding, causality, padding,
cache reordering."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.model.cache import CACHE_CHUNK
from nmt.model.layers import sinusoidal_positions
from nmt.model.transformer import Transformer

VOCAB = 50

pytestmark = pytest.mark.kernels  # float32 equalities within tolerances, on every CPU


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
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_decoder_is_causal(random_model) -> None:
    model = random_model()
    src = padded_src([6, 9])
    tgt_in = random_tgt(2, 12)
    changed = tgt_in.clone()
    changed[:, 5:] = random_tgt(2, 12, seed=7)[:, 5:]
    assert not torch.equal(changed, tgt_in)
    before, after = full_log_probs(model, src, tgt_in), full_log_probs(model, src, changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5:], before[:, 5:])  # later positions do see them


@torch.no_grad()
def test_source_padding_changes_nothing(random_model) -> None:
    model = random_model()
    src = padded_src([5])  # (1, 6)
    padded = torch.cat([src, torch.full((1, 9), PAD_ID)], 1)  # the same sentence, 9 pads more
    tgt_in = random_tgt(1, 8)
    memory, _ = model.encode(src)
    padded_memory, _ = model.encode(padded)
    torch.testing.assert_close(padded_memory[:, :6], memory, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        full_log_probs(model, padded, tgt_in),
        full_log_probs(model, src, tgt_in),
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        cached_log_probs(model, padded, tgt_in),
        cached_log_probs(model, src, tgt_in),
        atol=1e-5,
        rtol=0,
    )


@torch.no_grad()
def test_padded_batch_equals_each_sentence_alone(random_model) -> None:
    model = random_model()
    lengths = [2, 9, 5]
    src = padded_src(lengths)
    tgt_in = random_tgt(3, 6)
    batch = full_log_probs(model, src, tgt_in)
    for row, n in enumerate(lengths):
        alone = full_log_probs(model, src[row : row + 1, : n + 1], tgt_in[row : row + 1])
        torch.testing.assert_close(batch[row : row + 1], alone, atol=1e-5, rtol=0)


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
    for t in range(3, 5):
        step = model.decode_step(tgt_in[index, t], cache)
        torch.testing.assert_close(step, reordered[:, t], atol=1e-5, rtol=0)


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
    torch.testing.assert_close(
        model.decode_step(tokens[::beam, 0], shared).repeat_interleave(beam, 0),
        model.decode_step(tokens[:, 0], plain),
        atol=1e-5,
        rtol=0,
    )
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
        torch.testing.assert_close(
            model.decode_step(tokens[:, t], shared),
            model.decode_step(tokens[:, t], plain),
            atol=1e-5,
            rtol=0,
        )
    assert shared.layers[0].cross_k.size(0) == 2 and plain.layers[0].cross_k.size(0) == 6


@torch.no_grad()
def test_reordered_cache_equals_recomputing_the_reordered_prefixes(random_model) -> None:
    """Beam-style reorders at every step (hypotheses moved and copied within each
    sentence's beams, then a sentence dropped), across two growths of the self-attention
    cache: each step equals decoding the rows' reordered token prefixes from scratch."""
    model, beam = random_model(), 3
    src = padded_src([4, 7, 2]).repeat_interleave(beam, 0)  # (9, src_len), beams adjacent
    memory, src_mask = model.encode(src[::beam])
    cache = model.init_cache(memory, src_mask, rows_per_sentence=beam)
    gen = torch.Generator().manual_seed(3)
    history = torch.full((src.size(0), 1), BOS_ID)
    for t in range(2 * CACHE_CHUNK + 2):
        step = model.decode_step(history[:, -1], cache)
        full = full_log_probs(model, src, history)[:, -1]
        torch.testing.assert_close(step, full, atol=1e-5, rtol=0)
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
    assert kernels <= 1e-5 < bug
