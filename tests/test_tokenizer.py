"""nmt.data.tokenizer: fixed special ids, round trips on real lines, clear errors for bad files."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
import sentencepiece as spm

from nmt.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    ONE_BY_ONE,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    train_tokenizer,
)
from nmt.errors import CheckpointError, InputError


def test_special_ids_are_fixed(tokenizer: Tokenizer) -> None:
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    sp = tokenizer.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    assert [sp.IdToPiece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tokenizer.vocab_size == 1000  # as asked for (conftest)


@pytest.mark.parametrize("lang", ["de", "en"])
def test_round_trip_on_multi30k_lines(tokenizer: Tokenizer, spm_text, lang: str) -> None:
    # Lines the model was trained on, so every character is in the vocabulary (coverage 1.0).
    # SentencePiece applies NFKC and collapses whitespace: compare with that normalization.
    lines = spm_text[lang][::10]
    expected = [" ".join(unicodedata.normalize("NFKC", line).split()) for line in lines]
    ids = tokenizer.encode(lines)
    assert all(seq and min(seq) > EOS_ID for seq in ids)  # no specials, no unknowns
    assert tokenizer.decode(ids) == expected
    assert sum(a != b for a, b in zip(lines, expected)) < len(lines) // 20  # mostly untouched


def test_few_lines_one_by_one_equal_one_batch_call(tokenizer: Tokenizer, spm_text) -> None:
    """Below ONE_BY_ONE lines, encode() calls SentencePiece per line: the ids, their order
    and the empty lines must be those of SentencePiece's own list call."""
    lines = [*spm_text["de"][: ONE_BY_ONE - 2], "", "  "]
    batch = tokenizer.sp.Encode(lines, out_type=int)
    assert tokenizer.encode(lines) == batch and len(batch) == ONE_BY_ONE
    assert tokenizer.encode(lines[:-1]) == batch[:-1]  # one by one
    assert tokenizer.encode(tuple(lines[3:5])) == batch[3:5]  # any sequence


def test_decode_drops_special_ids(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(["Ein Hund läuft."])[0]
    assert tokenizer.decode([[BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]]) == ["Ein Hund läuft."]
    assert tokenizer.encode(["", "   "]) == [[], []]
    assert tokenizer.decode([[], [EOS_ID]]) == ["", ""]
    assert "".join(tokenizer.pieces("Ein Hund")).replace("\u2581", " ").strip() == "Ein Hund"


def test_missing_or_foreign_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="SentencePiece model not found"):
        Tokenizer(tmp_path / "absent.model")
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"this is not a protobuf \xff\x00\x12" * 10)
    with pytest.raises(CheckpointError, match=f"{bogus}: not a SentencePiece model"):
        Tokenizer(bogus)


def test_other_special_ids_are_rejected(tmp_path: Path, multi30k) -> None:
    prefix = tmp_path / "default"
    spm.SentencePieceTrainer.Train(  # SentencePiece's own defaults: unk=0, bos=1, eos=2, no pad
        sentence_iterator=iter(multi30k("train", "en", 500)),
        model_prefix=str(prefix),
        vocab_size=200,
        minloglevel=2,
    )
    with pytest.raises(CheckpointError, match=r"special ids .* are \(-1, 0, 1, 2\)"):
        Tokenizer(f"{prefix}.model")


def test_train_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no text"):
        train_tokenizer(["", "  "], tmp_path / "spm.model", 100)
    with pytest.raises(InputError, match="lower --vocab-size"):
        train_tokenizer(["ein Hund", "a dog"], tmp_path / "spm.model", 5000)
    assert not (tmp_path / "spm.model").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left behind
