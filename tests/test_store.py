"""nmt.data.store and ``nmt prepare``: encoding a corpus once into a memory-mapped data folder."""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import nmt.data.encoding as encoding
import nmt.data.store as store
from cli.main import app
from nmt.data.store import open_store, prepare, read_meta
from nmt.data.tokenizer import Tokenizer
from nmt.data.vocab import vocab_layout
from nmt.errors import InputError

runner = CliRunner()


def test_round_trip_gives_the_tokenizer_ids(
    tmp_path: Path, tiny_corpus: tuple[Path, Path], spm_model: Path, multi30k
) -> None:
    summary = prepare(
        tiny_corpus[0], tmp_path / "d", "de", "en", valid_prefix=tiny_corpus[1], spm_path=spm_model
    )
    src, tgt = multi30k("train", "de", 400), multi30k("train", "en", 400)
    tokenizer = Tokenizer(spm_model)
    data = open_store(tmp_path / "d", max_len=200)
    assert len(data) == summary.kept == summary.lines == 400
    for i in (0, 1, 199, 399):
        got_src, got_tgt = data.pair(i)
        assert got_src.tolist() == tokenizer.encode([src[i]])[0]
        assert got_tgt.tolist() == tokenizer.encode([tgt[i]])[0]
    assert data.src_lens.tolist() == [len(ids) for ids in tokenizer.encode(src)]
    assert summary.tokens == {"de": int(data.src_lens.sum()), "en": int(data.tgt_lens.sum())}
    meta = read_meta(tmp_path / "d")
    assert (meta["src_lang"], meta["tgt_lang"], meta["dtype"], meta["pairs"]) == (
        "de",
        "en",
        "<u2",
        400,
    )
    assert (tmp_path / "d" / "valid.en").read_text(encoding="utf-8").splitlines() == multi30k(
        "val", "en", 20
    )
    assert (tmp_path / "d" / "spm.model").read_bytes() == spm_model.read_bytes()
    assert not list((tmp_path / "d").glob(".prepare-*"))  # no temporary folder left


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_processes_write_the_same_files(
    tmp_path: Path, tiny_corpus: tuple[Path, Path], spm_model: Path, monkeypatch, start_method
) -> None:
    monkeypatch.setattr(encoding, "CHUNK_LINES", 37)  # 11 chunks: order across workers matters
    monkeypatch.setattr(encoding, "_start_method", lambda: start_method)
    prepare(tiny_corpus[0], tmp_path / "one", "de", "en", spm_path=spm_model, workers=1)
    prepare(tiny_corpus[0], tmp_path / "two", "de", "en", spm_path=spm_model, workers=2)
    for name in ("train.de.bin", "train.en.bin", "train.de.idx.npy", "train.en.idx.npy"):
        assert filecmp.cmp(tmp_path / "one" / name, tmp_path / "two" / name, shallow=False)


def test_length_filters_are_counted_by_reason(
    tmp_path: Path, corpus_writer, spm_model: Path
) -> None:
    src = ["Ein Hund läuft.", "", "Ein Mann " * 30, "Ja", "Eine Frau singt."]
    tgt = ["A dog runs.", "Empty source.", "A man.", "Yes " * 10, "A woman sings."]
    prefix = corpus_writer(tmp_path / "c", src, tgt)
    summary = prepare(prefix, tmp_path / "d", "de", "en", spm_path=spm_model, max_len=40,
                      max_ratio=9.0)  # fmt: skip
    assert summary.dropped == {"empty": 1, "too_long": 1, "ratio": 1}
    assert summary.kept == 2
    data = open_store(tmp_path / "d", max_len=40)
    tokenizer = Tokenizer(spm_model)
    assert [data.pair(i)[1].tolist() for i in range(2)] == tokenizer.encode(
        ["A dog runs.", "A woman sings."]
    )
    # Nothing can be longer than the folder's own filter: no row numbers are held.
    assert data.index is None and data.dropped == 0
    # Training's own max_len leaves out more, without preparing again.
    shorter = open_store(tmp_path / "d", max_len=4)
    assert len(shorter) + shorter.dropped == 2 and shorter.dropped >= 1
    kept = [i for i in range(2) if max(map(len, data.pair(i))) <= 4]
    assert [shorter.pair(j)[0].tolist() for j in range(len(shorter))] == [
        data.pair(i)[0].tolist() for i in kept
    ]
    assert shorter.src_lens.tolist() == [len(data.pair(i)[0]) for i in kept]


def test_mismatched_and_bad_files_are_named(tmp_path: Path, corpus_writer, spm_model: Path) -> None:
    prefix = corpus_writer(tmp_path / "c", ["a", "b", "c"], ["x", "y"])
    with pytest.raises(InputError, match=r"c\.de has 3 lines but .*c\.en has 2"):
        prepare(prefix, tmp_path / "d", "de", "en", spm_path=spm_model)
    prefix = corpus_writer(tmp_path / "u", ["Ein Hund.", "Eine Katze."], ["A dog.", "A cat."])
    Path(f"{prefix}.en").write_bytes(b"A dog.\nA \xe4 cat.\n")  # Latin-1 on line 2
    with pytest.raises(InputError, match=r"u\.en:2: not valid UTF-8"):
        prepare(prefix, tmp_path / "d", "de", "en", spm_path=spm_model)
    with pytest.raises(InputError, match=r"u\.en:2: not valid UTF-8"):  # while learning spm
        prepare(prefix, tmp_path / "d", "de", "en", vocab_size=20)
    assert not (tmp_path / "d").exists()  # a failed prepare leaves no folder behind


def test_a_complete_store_is_kept_unless_overwrite(
    tmp_path: Path, tiny_corpus: tuple[Path, Path], spm_model: Path, monkeypatch
) -> None:
    out = tmp_path / "d"
    prepare(tiny_corpus[0], out, "de", "en", spm_path=spm_model)
    before = (out / "train.en.bin").read_bytes()
    with pytest.raises(InputError, match="already holds a prepared corpus.*--overwrite"):
        prepare(tiny_corpus[0], out, "de", "en", spm_path=spm_model)

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        yield next(real(*args, **kwargs))
        raise OSError("disk full")

    real = store.encode_chunks
    monkeypatch.setattr(encoding, "CHUNK_LINES", 100)
    monkeypatch.setattr(store, "encode_chunks", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare(tiny_corpus[0], out, "de", "en", spm_path=spm_model, overwrite=True)
    # The interrupted overwrite left the previous store complete and loadable.
    assert (out / "train.en.bin").read_bytes() == before
    assert len(open_store(out, 200)) == 400
    assert not list(out.glob(".prepare-*"))


def test_sizes_and_filters_are_checked_before_anything_is_read(
    tmp_path: Path, tiny_corpus: tuple[Path, Path]
) -> None:
    """A vocabulary under 8 pieces reached SentencePiece (whose error said to lower it), 0
    silently meant 8,000, a negative --max-ratio dropped every pair and --max-len 0 was
    found only after encoding."""
    from nmt.data.vocab import vocab_options
    from nmt.errors import ConfigError

    for bad, message in [
        ({"vocab_size": 1}, "vocab_size=1 is too small (at least 8)"),
        ({"vocab_size": 0}, "vocab_size=0 is too small"),
        ({"max_ratio": -1.0}, "max_ratio=-1.0 must be a number >= 0"),
        ({"max_len": 0}, "max_len=0 must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            prepare(tiny_corpus[0], tmp_path / "d", "de", "en", **bad)
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match="src_vocab_size=0 is too small"):
        vocab_options("separate", None, 0, None)
    assert vocab_options("separate", 500, None, 300) == {"src_vocab_size": 500, "vocab_size": 300}


def test_overwrite_leaves_no_vocabulary_of_the_old_layout(
    tmp_path: Path, tiny_corpus: tuple[Path, Path], spm_model: Path
) -> None:
    """A store prepared again with another vocabulary layout reads as the new one: the old
    layout's SentencePiece files once stayed, and a joint spm.model won over new separate
    ones (training then ran on ids of another vocabulary)."""
    out = tmp_path / "d"
    prepare(tiny_corpus[0], out, "de", "en", spm_path=spm_model)
    for name in ("spm.src.model", "spm.tgt.model"):  # as a separate-layout store left them
        (out / name).write_bytes(spm_model.read_bytes())
    prepare(tiny_corpus[0], out, "de", "en", spm_path=spm_model, overwrite=True)
    assert sorted(p.name for p in out.glob("spm*.model")) == ["spm.model"]
    assert vocab_layout(out) == "joint"


def test_incomplete_or_damaged_folder(
    tmp_path: Path, tiny_corpus: tuple[Path, Path], spm_model: Path
) -> None:
    with pytest.raises(InputError, match="data folder not found"):
        open_store(tmp_path / "nowhere", 200)
    out = tmp_path / "d"
    prepare(tiny_corpus[0], out, "de", "en", spm_path=spm_model)
    ids = np.fromfile(out / "train.de.bin", dtype="<u2")
    ids[:-5].tofile(out / "train.de.bin")  # truncated
    with pytest.raises(InputError, match=r"train\.de\.bin: holds .* ids but its index says"):
        open_store(out, 200)
    (out / "meta.json").unlink()
    with pytest.raises(InputError, match="not a complete data folder"):
        open_store(out, 200)


def test_prepare_command_prints_a_summary(
    tmp_path: Path, tiny_corpus: tuple[Path, Path], spm_model: Path
) -> None:
    out = tmp_path / "d"
    args = ["prepare", "--train", str(tiny_corpus[0]), "--valid", str(tiny_corpus[1]), "-o",
            str(out), "--spm", str(spm_model), "--max-len", "30"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # the summary and progress go to stderr
    meta = json.loads((out / "meta.json").read_text())
    assert "sentence pairs read" in result.stderr and f"{meta['pairs']:,}" in result.stderr
    assert meta["dropped"]["too_long"] > 0 and meta["pairs"] + meta["dropped"]["too_long"] == 400
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "already holds a prepared corpus" in result.stderr
