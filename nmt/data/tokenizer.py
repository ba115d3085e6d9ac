"""SentencePiece tokenization with fixed special ids: pad=0, unk=1, bos=2, eos=3.

Token ids are SentencePiece's own; there is no second vocabulary layer (Kudo & Richardson 2018).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from nmt.errors import CheckpointError, InputError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
WORD_START = "\u2581"  # SentencePiece's "▁": the piece begins a whitespace word

# Fewer lines than this are encoded one call per line: SentencePiece's list call sets up a
# thread pool each time (about 50 µs of CPU, ten times a short line's encoding), which only
# pays off for many lines. Measured on Multi30k lines; a server request is often one line.
ONE_BY_ONE = 32


class Tokenizer:
    """A joint source/target SentencePiece model.

    Args:
        model_path: a ``.model`` file written by SentencePiece.

    Raises:
        CheckpointError: the file is missing, unreadable, or its special ids differ from
            pad=0, unk=1, bos=2, eos=3.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
    # Source ids that encode() puts before a line's own: a target-language tag that is not
    # in the line (nmt.data.targets.TaggedTokenizer); none here.
    n_tag_ids = 0

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: SentencePiece model not found")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{self.path}: not a SentencePiece model ({exc})") from None
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise CheckpointError(
                f"{self.path}: special ids (pad, unk, bos, eos) are {ids}, expected (0, 1, 2, 3); "
                "train the model with nmt or with --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3"
            )

    @property
    def vocab_size(self) -> int:
        """Number of pieces, special ones included."""
        return int(self.sp.GetPieceSize())

    @property
    def src_vocab_size(self) -> int:
        """Number of source pieces: the joint model's, here."""
        return self.vocab_size

    def vocabulary(self) -> list[str]:
        """The (target) pieces by id."""
        return [self.sp.IdToPiece(i) for i in range(self.vocab_size)]

    def source_vocabulary(self) -> list[str]:
        """The source pieces by id: the same as :meth:`vocabulary` for a joint model."""
        return self.vocabulary()

    def piece(self, i: int) -> str:
        """The (target) piece of id ``i``."""
        return str(self.sp.IdToPiece(i))

    def source_piece(self, i: int) -> str:
        """The source piece of id ``i``: the same as :meth:`piece` for a joint model."""
        return self.piece(i)

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Token ids of each line, without BOS/EOS (one list per line, in order).

        Fewer than :data:`ONE_BY_ONE` lines are encoded one by one, more in one
        (multi-threaded) SentencePiece call: the same ids either way.
        """
        if len(lines) < ONE_BY_ONE:
            return [self.sp.Encode(line, out_type=int) for line in lines]
        return self.sp.Encode(list(lines), out_type=int)

    def encode_target(self, lines: Sequence[str]) -> list[list[int]]:
        """Token ids of target lines (the same model as the source's: it is joint)."""
        return self.encode(lines)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Detokenized text of each id list; special ids are dropped."""
        return [self.sp.Decode([i for i in seq if i > EOS_ID]) for seq in ids]

    def pieces(self, line: str) -> list[str]:
        """The pieces of one line (for inspection)."""
        return self.sp.Encode(line, out_type=str)


def train_tokenizer(
    sentences: Iterable[str],
    out_path: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    max_sentences: int = 2_000_000,
    user_defined_symbols: Sequence[str] = (),
) -> Tokenizer:
    """Train a SentencePiece model on ``sentences`` and write it atomically to ``out_path``.

    Args:
        sentences: training text (source and target lines for a joint vocabulary), read
            once as a stream; SentencePiece keeps a random sample of ``max_sentences``.
        out_path: destination ``.model`` file; a ``.vocab`` file is written beside it.
        vocab_size: number of pieces (tokens), special ones included.
        model_type: ``unigram`` (Kudo 2018) or ``bpe``.
        max_sentences: sample at most this many sentences.
        user_defined_symbols: pieces that are always one token, such as the target-language
            tags of a multilingual model (:mod:`nmt.data.multilingual`).

    Raises:
        InputError: no training text, or too little text for ``vocab_size``; an error raised
            while reading ``sentences`` is raised as it is.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seen, errors = 0, []

    def text() -> Iterable[str]:  # streamed: SentencePiece keeps only its sample
        nonlocal seen
        try:
            for line in sentences:
                if line.strip():
                    seen += 1
                    yield line
        except Exception as exc:  # SentencePiece would turn it into a RuntimeError
            errors.append(exc)
            raise

    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".spm-") as tmp:
        prefix = os.path.join(tmp, "spm")
        try:
            spm.SentencePieceTrainer.Train(
                sentence_iterator=iter(text()),
                model_prefix=prefix,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
                user_defined_symbols=list(user_defined_symbols),
            )
        except RuntimeError as exc:
            if errors:
                raise errors[0] from None
            if seen == 0:
                raise InputError("no text to train the SentencePiece model on") from None
            raise InputError(
                f"SentencePiece training failed: {exc}; lower --vocab-size or give more text"
            ) from None
        os.replace(prefix + ".vocab", out_path.with_suffix(".vocab"))
        os.replace(prefix + ".model", out_path)
    return Tokenizer(out_path)
