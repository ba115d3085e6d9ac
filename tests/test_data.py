"""nmt.data.parallel: corpus files, file:line errors, padding and collation."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest
import torch

from nmt.data.parallel import (
    ParallelData,
    Prefetcher,
    collate,
    corpus_path,
    encode_parallel,
    pad,
    read_lines,
    read_parallel,
)
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from nmt.errors import InputError


def test_corpus_path_finds_plain_and_gz(tmp_path: Path) -> None:
    (tmp_path / "a.de").write_text("x\n", encoding="utf-8")
    (tmp_path / "a.en.gz").write_bytes(gzip.compress(b"y\n"))
    assert corpus_path(tmp_path / "a", "de") == tmp_path / "a.de"
    assert corpus_path(tmp_path / "a", "en") == tmp_path / "a.en.gz"
    assert read_parallel(tmp_path / "a", "de", "en") == (["x"], ["y"])


def test_missing_corpus_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        corpus_path(tmp_path / "a", "fr")
    assert str(info.value).startswith(f"{tmp_path / 'a.fr'}: corpus file not found")
    assert "a.fr.gz" in str(info.value)
    with pytest.raises(InputError, match="file not found"):
        read_lines(tmp_path / "absent.txt")


def test_gz_and_plain_read_the_same(tmp_path: Path, multi30k) -> None:
    lines = multi30k("val", "de", 50)
    text = "".join(line + "\r\n" for line in lines).encode("utf-8")  # Windows newlines too
    (tmp_path / "v.txt").write_bytes(text)
    (tmp_path / "v.txt.gz").write_bytes(gzip.compress(text))
    assert read_lines(tmp_path / "v.txt") == read_lines(tmp_path / "v.txt.gz") == lines


def test_line_count_mismatch_names_both_files_and_counts(tmp_path: Path, corpus_writer) -> None:
    corpus_writer(tmp_path / "c", ["a", "b", "c"], ["x", "y"])
    with pytest.raises(InputError) as info:
        read_parallel(tmp_path / "c", "de", "en")
    assert f"{tmp_path / 'c.de'} has 3 lines but {tmp_path / 'c.en'} has 2" in str(info.value)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_non_utf8_line_names_file_and_line(tmp_path: Path, gz: bool) -> None:
    data = b"ein Hund\nzwei Katzen\ndrei \xff V\xf6gel\nvier\n"
    path = tmp_path / ("bad.de.gz" if gz else "bad.de")
    path.write_bytes(gzip.compress(data) if gz else data)
    (tmp_path / "bad.en").write_text("a\nb\nc\nd\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_parallel(tmp_path / "bad", "de", "en")
    assert f"{path}:3: not valid UTF-8" in str(info.value)
    assert (info.value.path, info.value.line) == (str(path), 3)


def test_broken_gz_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "fake.gz").write_bytes(b"not gzip at all\n")
    with pytest.raises(InputError, match="cannot read file"):
        read_lines(tmp_path / "fake.gz")


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_corpus_is_an_error(tmp_path: Path, text: str) -> None:
    for lang in ("de", "en"):
        (tmp_path / f"e.{lang}").write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="corpus is empty"):
        read_parallel(tmp_path / "e", "de", "en")


def test_collate_adds_bos_eos_and_pads_with_zero() -> None:
    data = ParallelData(src=[[10, 11, 12], [20]], tgt=[[30], [40, 41, 42, 43]])
    batch = collate(data, [1, 0])
    assert batch.src.dtype == torch.long
    assert batch.src.tolist() == [[20, EOS_ID, PAD_ID, PAD_ID], [10, 11, 12, EOS_ID]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 40, 41, 42, 43], [BOS_ID, 30, 0, 0, 0]]
    assert batch.tgt_out.tolist() == [[40, 41, 42, 43, EOS_ID], [30, EOS_ID, 0, 0, 0]]
    assert batch.n_tgt_tokens == 5 + 2
    assert PAD_ID == 0


def test_encode_parallel_drops_empty_and_long_pairs(tokenizer: Tokenizer) -> None:
    src = ["Ein Hund.", "", "Eine Katze sitzt auf dem Dach.", "Hallo"]
    tgt = ["A dog.", "Nothing", "A cat sits on the roof.", ""]
    data = encode_parallel(tokenizer, src, tgt, max_len=100)
    assert len(data) == 2 and data.dropped == 2
    assert tokenizer.decode(data.tgt) == ["A dog.", "A cat sits on the roof."]
    short = encode_parallel(tokenizer, src, tgt, max_len=len(tokenizer.encode(["A dog."])[0]))
    assert tokenizer.decode(short.tgt) == ["A dog."]


def test_pad_accepts_lists_and_arrays() -> None:
    import numpy as np

    lists = [[5, 6, 7], [8]]
    arrays = [np.array(s, dtype="<u2") for s in lists]
    expected = torch.tensor([[BOS_ID, 5, 6, 7, EOS_ID], [BOS_ID, 8, EOS_ID, PAD_ID, PAD_ID]])
    assert torch.equal(pad(lists, prefix=BOS_ID, suffix=EOS_ID), expected)
    assert torch.equal(pad(arrays, prefix=BOS_ID, suffix=EOS_ID), expected)
    assert pad(arrays).dtype == torch.long


def test_prefetcher_keeps_order_and_raises_the_producers_error() -> None:
    with Prefetcher(iter(range(50)), depth=3) as items:
        assert list(items) == list(range(50))

    def broken():  # type: ignore[no-untyped-def]
        yield 1
        raise InputError("bad line", "corpus.de", 7)

    with Prefetcher(broken(), depth=3) as items, pytest.raises(InputError, match="corpus.de:7"):
        list(items)


def test_prefetcher_stops_its_thread_when_the_consumer_stops_early() -> None:
    produced = []

    def endless():  # type: ignore[no-untyped-def]
        for i in itertools.count():
            produced.append(i)
            yield i

    with Prefetcher(endless(), depth=2) as items:
        for item in items:
            if item == 5:
                break
    assert not items.thread.is_alive()
    assert len(produced) <= 5 + 1 + 2 + 1  # at most depth items (and one in hand) ahead


def collate_one_by_one(data, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:  # type: ignore[no-untyped-def]
    """The collation before it was vectorised, sentence by sentence: the reference."""
    pairs = [data.pair(int(i)) for i in indices]
    width_src = max(len(s) for s, _ in pairs) + 1
    width_tgt = max(len(t) for _, t in pairs) + 1
    src = torch.full((len(pairs), width_src), PAD_ID, dtype=torch.int64)
    tgt_in = torch.full((len(pairs), width_tgt), PAD_ID, dtype=torch.int64)
    tgt_out = torch.full((len(pairs), width_tgt), PAD_ID, dtype=torch.int64)
    for row, (s, t) in enumerate(pairs):
        src[row, : len(s) + 1] = torch.tensor([*map(int, s), EOS_ID])
        tgt_in[row, : len(t) + 1] = torch.tensor([BOS_ID, *map(int, t)])
        tgt_out[row, : len(t) + 1] = torch.tensor([*map(int, t), EOS_ID])
    return src, tgt_in, tgt_out, sum(len(t) + 1 for _, t in pairs)


def test_vectorised_collate_gives_the_tensors_of_sentence_by_sentence_collation(
    tmp_path: Path, spm_model: Path, tokenizer: Tokenizer, multi30k, corpus_writer
) -> None:
    """The prepared store's batches (every batch of a real epoch plan of 2,000 Multi30k
    pairs, the whole store and a max_len-filtered view of it), an in-memory corpus's and a
    multilingual corpus's equal, id for id, what sentence-by-sentence collation gives."""
    from nmt.data.batching import make_batches
    from nmt.data.multilingual import MultiCorpus
    from nmt.data.store import open_store, prepare

    de, en = multi30k("train", "de", 2000), multi30k("train", "en", 2000)
    prepare(corpus_writer(tmp_path / "train", de, en), tmp_path / "d", "de", "en",
            spm_path=spm_model)  # fmt: skip
    stores = [open_store(tmp_path / "d", 200), open_store(tmp_path / "d", 16)]
    assert stores[0].index is None and stores[1].index is not None  # both paths of gather
    in_memory = encode_parallel(tokenizer, de[:300], en[:300], 200)
    multi = MultiCorpus([stores[1], in_memory], [5, 6], temperature=1.0, seed=1)
    for corpus in (*stores, in_memory, multi):
        plan = make_batches(corpus.src_lens, corpus.tgt_lens, 500, seed=3)
        assert len(plan) > 3
        for indices in [*plan, plan[0].tolist(), [len(corpus) - 1, 0, 7, 7]]:
            batch = collate(corpus, indices)
            src, tgt_in, tgt_out, n_tokens = collate_one_by_one(corpus, indices)
            assert torch.equal(batch.src, src) and torch.equal(batch.tgt_in, tgt_in)
            assert torch.equal(batch.tgt_out, tgt_out) and batch.n_tgt_tokens == n_tokens
            assert batch.src.dtype == batch.tgt_in.dtype == torch.int64
