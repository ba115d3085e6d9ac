"""nmt.data.batching: token-based batches equal the straightforward greedy, cover every example
once, respect the budget, differ by seed only in order, split disjointly over ranks, and are
planned ahead in the background."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nmt.data import batching
from nmt.data.batching import (
    BatchLayout,
    EpochPlanner,
    cut_batches,
    epoch_seed,
    make_batches,
    stable_order,
)
from nmt.data.tokenizer import Tokenizer


def random_lengths(n: int, seed: int = 0, high: int = 60) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    return [rng.randint(1, high) for _ in range(n)], [rng.randint(1, high) for _ in range(n)]


def reference_batches(src: list[int], tgt: list[int], batch_tokens: int) -> list[list[int]]:
    """The plain Python greedy the numpy code must equal: examples sorted by (target,
    source) length (ties by index), a batch closed when one more example would make
    count * max(max(src, tgt) + 1) exceed the budget."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in sorted(range(len(src)), key=lambda i: (tgt[i], src[i])):
        width = max(src[i], tgt[i]) + 1
        if current and (len(current) + 1) * max(longest, width) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, width)
    if current:
        batches.append(current)
    return batches


def length_pairs(batch: list[int] | np.ndarray, src: list[int], tgt: list[int]) -> list:
    return sorted((tgt[i], src[i]) for i in batch)


@pytest.mark.parametrize("batch_tokens", [16, 100, 1000, 5000])
@pytest.mark.parametrize("seed", [0, 1])
def test_layout_equals_the_python_greedy(batch_tokens: int, seed: int) -> None:
    src, tgt = random_lengths(700, seed, high=30 + 30 * seed)
    src[7], tgt[7] = 2000, 3  # longer than any budget: a batch of its own
    expected = reference_batches(src, tgt, batch_tokens)
    layout = BatchLayout(src, tgt, batch_tokens)
    assert layout.order.tolist() == [i for b in expected for i in b]
    assert np.diff(layout.bounds).tolist() == [len(b) for b in expected]
    # An epoch's plan has the same batches up to ties (examples of equal lengths).
    plan = layout.plan(seed=5)
    assert sorted(length_pairs(b, src, tgt) for b in plan) == sorted(
        length_pairs(b, src, tgt) for b in expected
    )


def test_cut_batches_is_the_greedy_on_unsorted_widths() -> None:
    # Not sorted: the running maximum matters (a wide example closes the batch early).
    # [3 3] (3 x 9 > 20), [9 2] (3 x 9 > 20), [2 2 2 2] (5 x 40 > 20), [40] (over budget
    # alone), [1 5] (2 x 5 = 10).
    widths = np.array([3, 3, 9, 2, 2, 2, 2, 2, 40, 1, 5])
    assert cut_batches(widths, 20).tolist() == [0, 2, 4, 8, 9, 11]
    assert cut_batches(widths[:0], 20).tolist() == [0]


@pytest.mark.parametrize("batch_tokens", [16, 100, 1000])
def test_every_example_once_within_budget(batch_tokens: int) -> None:
    src, tgt = random_lengths(500)
    src[7], tgt[7] = 2000, 3
    batches = make_batches(src, tgt, batch_tokens, seed=3)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(500))
    for batch in batches:
        width = max(max(src[i], tgt[i]) + 1 for i in batch)
        assert len(batch) == 1 or len(batch) * width <= batch_tokens
    assert [7] in [b.tolist() for b in batches]


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    src, tgt = random_lengths(300)

    def as_lists(seed: int) -> list[list[int]]:
        return [b.tolist() for b in make_batches(src, tgt, 200, seed=seed)]

    assert as_lists(1) == as_lists(1)
    assert as_lists(1) != as_lists(2)
    # Not only the batch order: ties are shuffled, so the batches themselves differ.
    assert sorted(map(sorted, as_lists(1))) != sorted(map(sorted, as_lists(2)))
    assert len(as_lists(1)) == len(as_lists(2))  # ties have equal lengths: same count


def test_groups_similar_lengths(tokenizer: Tokenizer, multi30k) -> None:
    src = [len(x) for x in tokenizer.encode(multi30k("train", "de", 2000))]
    tgt = [len(x) for x in tokenizer.encode(multi30k("train", "en", 2000))]
    real = sum(max(s, t) + 1 for s, t in zip(src, tgt))
    batches = make_batches(np.array(src), np.array(tgt), 1000, seed=0)
    padded = sum(len(b) * max(max(src[i], tgt[i]) + 1 for i in b) for b in batches)
    rng = random.Random(0)
    order = rng.sample(range(len(src)), len(src))
    unsorted = [order[i : i + 40] for i in range(0, len(order), 40)]
    padded_unsorted = sum(len(b) * max(max(src[i], tgt[i]) + 1 for i in b) for b in unsorted)
    assert padded < 1.3 * real  # sorted batches pad little (about 1.25x here) ...
    assert padded_unsorted > 1.8 * real  # ... where random batches pad about 2x


@pytest.mark.parametrize(("world_size", "accum"), [(1, 1), (1, 3), (2, 1), (3, 2)])
def test_rank_shares_are_disjoint_and_cover_the_usable_batches(world_size: int, accum: int) -> None:
    src, tgt = random_lengths(2000, seed=4)
    planners = [
        EpochPlanner(src, tgt, 150, seed=9, rank=r, world_size=world_size, accum=accum)
        for r in range(world_size)
    ]
    plan = planners[0].plan(2)
    usable = len(plan) // (world_size * accum) * (world_size * accum)
    assert usable > 0
    taken: list[list[int]] = []
    for planner in planners:
        steps = planner.steps(2)
        assert len(steps) == planner.steps_per_epoch == usable // (world_size * accum)
        for step in steps:
            assert len(step) == accum
            taken.extend(step)
    assert sorted(map(sorted, taken)) == sorted(sorted(plan[k].tolist()) for k in range(usable))
    # The share of one rank is what the previous list-based code took: batches[rank::world].
    steps = planners[-1].steps(2)
    mine = [plan[k].tolist() for k in range(world_size - 1, usable, world_size)]
    assert [b for step in steps for b in step] == mine


def test_planner_builds_the_next_epoch_ahead_and_equal_to_planning_it_now() -> None:
    src, tgt = random_lengths(1000, seed=2)
    planner = EpochPlanner(src, tgt, 300, seed=7)
    first = list(planner.steps(1))
    assert planner._ahead is not None and planner._ahead[0] == 2
    ahead = planner._ahead[1].result(timeout=30)  # built in the background thread
    second = list(planner.steps(2))
    assert second == [[b.tolist()] for b in ahead]
    fresh = EpochPlanner(src, tgt, 300, seed=7)
    assert list(fresh.steps(2)) == second  # the same as planning epoch 2 directly (resume)
    assert first != second
    assert planner.plan(1).perm.tolist() == fresh.layout.plan(epoch_seed(7, 1)).perm.tolist()


def test_an_error_in_the_background_reaches_the_caller(monkeypatch) -> None:
    src, tgt = random_lengths(50)
    planner = EpochPlanner(src, tgt, 300, seed=7)

    def broken(seed: int):  # type: ignore[no-untyped-def]
        raise RuntimeError("no memory left")

    assert planner._ahead is None
    planner.steps(1)[0]  # the first update asked for starts planning the next epoch
    assert planner._ahead is not None
    planner._ahead[1].result(timeout=30)
    monkeypatch.setattr(planner.layout, "plan", broken)
    planner.steps(2)[0]  # built ahead before the break: fine; epoch 3 breaks ahead
    with pytest.raises(RuntimeError, match="no memory left"):
        planner.steps(3)


def test_two_million_examples_batch_like_the_greedy_in_bulk() -> None:
    """A corpus too large for a per-example Python loop to be quick: the plan's invariants,
    checked with numpy (the greedy itself is proven on small inputs above)."""
    n, batch_tokens = 2_000_000, 2048
    rng = np.random.default_rng(0)
    src = rng.integers(1, 80, n).astype(np.int32)
    tgt = np.clip(src + rng.integers(-5, 6, n), 1, None).astype(np.int32)
    planner = EpochPlanner(src, tgt, batch_tokens, seed=1, world_size=2, accum=2)
    layout, plan = planner.layout, planner.plan(1)
    assert np.array_equal(np.sort(plan.order), np.arange(n))
    assert np.array_equal(np.sort(plan.perm), np.arange(len(plan)))
    widths = (np.maximum(src, tgt) + 1)[plan.order]
    counts = np.diff(layout.bounds)
    batch_max = np.maximum.reduceat(widths, layout.bounds[:-1])
    assert (counts * batch_max <= batch_tokens).all()
    # Greedy: the next example would not have fitted into any batch but the last.
    grown = np.maximum(batch_max[:-1], widths[layout.bounds[1:-1]])
    assert ((counts[:-1] + 1) * grown > batch_tokens).all()
    keys = tgt[plan.order].astype(np.int64) * 1000 + src[plan.order]
    assert (np.diff(keys) >= 0).all()  # sorted by (target, source) length
    assert planner.steps_per_epoch == len(plan) // 4 == len(planner.steps(1))


@pytest.mark.parametrize("chunk", [7, 64, 1 << 18])
def test_stable_order_equals_a_stable_argsort(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(batching, "SORT_CHUNK", chunk)
    key = np.random.default_rng(chunk).integers(0, 50, 1000).astype(np.uint16)
    expected = np.argsort(key, kind="stable")
    assert np.array_equal(stable_order(key), expected)
    assert stable_order(key).dtype == np.int32
    monkeypatch.setattr(batching, "MAX_BINS", 10)  # keys too large to count: argsort
    assert np.array_equal(stable_order(key), expected)
    assert len(stable_order(key[:0])) == 0


def test_a_checkpoint_from_before_the_numpy_batch_order_is_not_resumed_silently() -> None:
    """resume.pt files written before the batch order was recorded used the first order; the
    numpy plans group other examples, so continuing their epoch position would skip and
    repeat batches."""
    from pathlib import Path

    from nmt.data.batching import BATCHING_VERSION
    from nmt.train.resume import changed_data_order

    now = {"batching": BATCHING_VERSION, "batch_tokens": 2048, "seed": 1}
    message = changed_data_order({}, now, Path("run/resume.pt"), 3)
    assert message is not None and "batching=1, this run gives 2" in message
    assert "--reset-data-position" in message
    assert changed_data_order({"data_order": dict(now)}, now, Path("run/resume.pt"), 3) is None


def test_the_corpus_fingerprint_counts_every_token_of_a_uint16_store() -> None:
    """Memory-mapped stores give uint16 lengths; a Python sum of those wrapped at 65,536."""
    from nmt.train.resume import corpus_fingerprint

    lens = np.full(5, 60_000, dtype=np.uint16)
    corpus = type("C", (), {"src_lens": lens, "tgt_lens": lens, "__len__": lambda self: 5})()
    assert corpus_fingerprint(corpus) == "5 pairs, 300000+300000 tokens"
