"""The vocabulary files of a model folder: which tokenizer a folder holds, and loading it."""

from __future__ import annotations

from pathlib import Path

from nmt.marian_vocab import MARIAN_FILES, VOCAB_FILE, MarianVocabulary
from nmt.tokenizer import Tokenizer


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer of a model folder (or of a CTranslate2 folder ``nmt export`` wrote).

    ``spm.model`` (nmt's joint SentencePiece model) when the folder has one, else the
    :class:`MarianVocabulary` of an imported model (``vocab.json``, ``source.spm``,
    ``target.spm``).

    Raises:
        CheckpointError: neither is there, or a file is unreadable.
    """
    folder = Path(folder)
    joint = folder / "spm.model"
    if joint.is_file() or not (folder / VOCAB_FILE).is_file():
        return Tokenizer(joint)
    return MarianVocabulary(folder)


def tokenizer_files(folder: str | Path) -> list[str]:
    """Names of the tokenizer files in a model folder: ``spm.model``, or the Marian ones."""
    folder = Path(folder)
    if (folder / "spm.model").is_file() or not (folder / VOCAB_FILE).is_file():
        return ["spm.model"]
    return list(MARIAN_FILES)
