"""The vocabulary of imported Marian (OPUS-MT) models: one id space over two SentencePiece models.

nmt's own models use SentencePiece ids directly (:mod:`nmt.data.tokenizer`). Marian models
(Junczys-Dowmunt et al. 2018) as published by OPUS-MT (Tiedemann & Thottingal 2020) and
converted by Hugging Face instead map pieces to ids through ``vocab.json``: the source text is
cut into pieces by ``source.spm``, the target text by ``target.spm``, and both sides look their
pieces up in the one ``vocab.json`` (a piece it lacks becomes ``<unk>``). Its special ids are
Marian's: ``</s>`` (EOS) 0, ``<unk>`` 1, and ``<pad>`` appended last by the Hugging Face
conversion, from which the decoder also starts. This is the one place where a vocabulary
file sits on top of SentencePiece, and it is used only for imported models.

Multi-target models put a target tag such as ``>>fra<<`` in their vocabulary; as in Hugging
Face's ``MarianTokenizer``, a source line that starts with one (``>>fra<< Hello``) has it
encoded as that single token. Moses punctuation normalization, which ``MarianTokenizer``
applies when the ``sacremoses`` package is installed, is not applied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from nmt.data.tokenizer import WORD_START, Tokenizer
from nmt.errors import CheckpointError

VOCAB_FILE, SOURCE_SPM, TARGET_SPM = "vocab.json", "source.spm", "target.spm"
MARIAN_FILES = (VOCAB_FILE, SOURCE_SPM, TARGET_SPM)
EOS_PIECE, UNK_PIECE, PAD_PIECE = "</s>", "<unk>", "<pad>"


def read_vocab(path: Path) -> list[str]:
    """The pieces of a Marian ``vocab.json`` (a JSON object piece → id), by id.

    Raises:
        CheckpointError: missing or unreadable file, ids that are not ``0 .. n-1`` each once,
            or no ``</s>``, ``<unk>`` or ``<pad>`` entry.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: vocabulary file not found")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in mapping.values()
    ):
        raise CheckpointError(f"{path}: expected a JSON object mapping pieces to integer ids")
    pieces: list[str | None] = [None] * len(mapping)
    for piece, i in mapping.items():
        if not 0 <= i < len(mapping) or pieces[i] is not None:
            raise CheckpointError(
                f"{path}: id {i} of {piece!r} is out of range or taken twice; the ids must be "
                f"0 .. {len(mapping) - 1}, each once"
            )
        pieces[i] = piece
    for special in (EOS_PIECE, UNK_PIECE, PAD_PIECE):
        if special not in mapping:
            raise CheckpointError(f"{path}: no {special!r} entry")
    return [p for p in pieces if p is not None]


def load_spm(path: Path) -> spm.SentencePieceProcessor:
    """A SentencePiece model file, loaded.

    Raises:
        CheckpointError: missing or not a SentencePiece model.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: SentencePiece model not found")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a SentencePiece model ({exc})") from None
    return sp


class MarianVocabulary(Tokenizer):
    """``vocab.json`` ids over ``source.spm`` (source side) and ``target.spm`` (target side).

    It has :class:`~nmt.data.tokenizer.Tokenizer`'s interface (``encode`` for sources, ``decode``
    for targets, ``vocab_size``, the special ids), so translation and export take either.

    Args:
        folder: a folder holding ``vocab.json``, ``source.spm`` and ``target.spm``.

    Raises:
        CheckpointError: a file is missing or unreadable (named), or ``vocab.json`` lacks a
            special piece.
    """

    def __init__(self, folder: str | Path):  # not super().__init__: that reads a joint model
        folder = Path(folder)
        self.path = folder / VOCAB_FILE
        self.pieces_by_id = read_vocab(self.path)
        self.ids = {piece: i for i, piece in enumerate(self.pieces_by_id)}
        self.sp = load_spm(folder / SOURCE_SPM)
        self.target_sp = load_spm(folder / TARGET_SPM)
        self.eos_id, self.unk_id = self.ids[EOS_PIECE], self.ids[UNK_PIECE]
        self.pad_id = self.bos_id = self.ids[PAD_PIECE]  # the decoder starts from <pad>
        self.special_ids = {self.eos_id, self.unk_id, self.pad_id}
        self.target_tags = [p for p in self.pieces_by_id if p.startswith(">>") and p.endswith("<<")]

    @property
    def vocab_size(self) -> int:
        """Entries of ``vocab.json``, special ones included."""
        return len(self.pieces_by_id)

    def vocabulary(self) -> list[str]:
        """The pieces by id (``vocab.json`` inverted)."""
        return list(self.pieces_by_id)

    def piece(self, i: int) -> str:
        """The piece of id ``i`` (source and target pieces share ``vocab.json``'s ids)."""
        return self.pieces_by_id[i]

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Source ids of each line (``source.spm`` pieces looked up in ``vocab.json``), without
        EOS; a leading ``>>tag<<`` becomes one token."""
        out = []
        for line in lines:
            tag: list[str] = []
            end = line.find("<<") if line.startswith(">>") else -1
            if end != -1:
                tag, line = [line[: end + 2]], line[end + 2 :]
            out.append(self._ids(tag + self.sp.Encode(line, out_type=str)))
        return out

    def encode_target(self, lines: Sequence[str]) -> list[list[int]]:
        """Target ids of each line (``target.spm`` pieces looked up in ``vocab.json``)."""
        return [self._ids(p) for p in self.target_sp.Encode(list(lines), out_type=str)]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Target text of each id list through ``target.spm``; EOS, UNK and PAD are dropped.

        A piece that ``vocab.json`` holds but ``target.spm`` does not (a source-side word
        copied into the output) is left verbatim by SentencePiece, ``▁`` included; as
        transformers' ``MarianTokenizer.convert_tokens_to_string`` does, every remaining ``▁``
        then becomes a space and the text is stripped.
        """
        return [
            self.target_sp.DecodePieces(
                [self.pieces_by_id[i] for i in seq if i not in self.special_ids]
            )
            .replace(WORD_START, " ")
            .strip()
            for seq in ids
        ]

    def pieces(self, line: str) -> list[str]:
        """The source pieces of one line (for inspection)."""
        return [self.pieces_by_id[i] for i in self.encode([line])[0]]

    def _ids(self, pieces: list[str]) -> list[int]:
        return [self.ids.get(p, self.unk_id) for p in pieces]
