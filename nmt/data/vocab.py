"""The vocabulary files of a model folder: its layout, loading it, training, copying and
comparing it.

A model folder (and a data folder, and a CTranslate2 export) holds one of three layouts:

- ``joint``: ``spm.model``, one SentencePiece model for source and target, whose ids the
  model uses directly, with one embedding for the source, the target and the output
  projection (Press & Wolf 2017);
- ``separate``: ``spm.src.model`` and ``spm.tgt.model``, one SentencePiece model per
  side, for pairs of different scripts (en–ru, en–zh, en–ar): the source has its own
  embedding, the target embedding stays tied to the output projection;
- ``marian``: an imported Marian model's ``vocab.json`` over ``source.spm`` and
  ``target.spm`` (:mod:`nmt.data.marian_vocab`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from nmt.config import MIN_VOCAB_SIZE, ModelConfig
from nmt.data.marian_vocab import MARIAN_FILES, VOCAB_FILE, MarianVocabulary
from nmt.data.tokenizer import Tokenizer, train_tokenizer
from nmt.errors import CheckpointError, ConfigError
from nmt.fileio import atomic_write

JOINT_SPM, SRC_SPM, TGT_SPM = "spm.model", "spm.src.model", "spm.tgt.model"
LAYOUTS = ("joint", "separate")  # what nmt trains; "marian" is imported only
LAYOUT_FILES = {"joint": [JOINT_SPM], "separate": [SRC_SPM, TGT_SPM], "marian": list(MARIAN_FILES)}


class SeparateTokenizer(Tokenizer):
    """A source and a target SentencePiece model, each with nmt's special ids (pad 0, unk 1,
    BOS 2, EOS 3), so that both sides share the special ids but not the pieces.

    ``encode`` and ``pieces`` read the source model; ``encode_target``, ``decode``,
    ``vocabulary``, ``piece`` and ``vocab_size`` the target one; ``source_vocabulary``,
    ``source_piece`` and ``src_vocab_size`` the source one.

    Args:
        src_path / tgt_path: the two ``.model`` files.

    Raises:
        CheckpointError: a file is missing, unreadable or has other special ids (named).
    """

    def __init__(self, src_path: str | Path, tgt_path: str | Path):  # noqa: D107
        self.source = Tokenizer(src_path)
        self.target = Tokenizer(tgt_path)
        self.path, self.sp = self.target.path, self.target.sp

    @property
    def vocab_size(self) -> int:
        """Target pieces, special ones included."""
        return self.target.vocab_size

    @property
    def src_vocab_size(self) -> int:
        """Source pieces, special ones included."""
        return self.source.vocab_size

    def source_vocabulary(self) -> list[str]:
        """The source pieces by id."""
        return self.source.vocabulary()

    def source_piece(self, i: int) -> str:
        """The source piece of id ``i``."""
        return self.source.piece(i)

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Source ids of each line (the source model), without BOS/EOS."""
        return self.source.encode(lines)

    def encode_target(self, lines: Sequence[str]) -> list[list[int]]:
        """Target ids of each line (the target model), without BOS/EOS."""
        return self.target.encode(lines)

    def pieces(self, line: str) -> list[str]:
        """The source pieces of one line (for inspection)."""
        return self.source.pieces(line)


def vocab_options(
    layout: str | None,
    vocab_size: int | None,
    src_vocab_size: int | None,
    tgt_vocab_size: int | None,
) -> dict[str, int | None]:
    """The model-config overrides (``vocab_size``, ``src_vocab_size``; ``None`` = keep) of
    the command line's ``--vocab-layout``, ``--vocab-size``, ``--src-vocab-size`` and
    ``--tgt-vocab-size``. Separate vocabularies take ``--vocab-size`` (or 8,000) for a
    side whose own size is not given.

    Raises:
        ConfigError: an unknown layout, a per-side size without ``--vocab-layout
            separate``, or a separate size under 8.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"--vocab-layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if layout != "separate":
        given = [n for n, v in (("src", src_vocab_size), ("tgt", tgt_vocab_size)) if v is not None]
        if given:
            raise ConfigError(
                f"--{given[0]}-vocab-size needs --vocab-layout separate (a joint vocabulary "
                "has one size: --vocab-size)"
            )
        return {"vocab_size": vocab_size, "src_vocab_size": 0 if layout else None}
    default = ModelConfig.vocab_size if vocab_size is None else vocab_size
    sizes = {
        "src_vocab_size": default if src_vocab_size is None else src_vocab_size,
        "vocab_size": default if tgt_vocab_size is None else tgt_vocab_size,
    }
    for name, size in sizes.items():
        if size < MIN_VOCAB_SIZE:  # 0 once meant the default here, and a joint one downstream
            raise ConfigError(f"{name}={size} is too small (at least {MIN_VOCAB_SIZE})")
    return dict(sizes)


def check_vocab_sizes(folder: str | Path, asked: dict[str, int | None], option: str) -> None:
    """Check vocabulary sizes asked for on the command line (:func:`vocab_options`' result)
    against the vocabulary of ``folder`` (a ``--data`` or ``--init-from`` folder), which the
    model must take: a size that disagrees was once silently ignored.

    Raises:
        ConfigError: an asked size that differs (both sizes and ``option``'s folder named).
    """
    if not any(asked.values()):
        return
    tokenizer = load_tokenizer(folder)
    separate = vocab_layout(folder) == "separate"
    have = {
        "vocab_size": tokenizer.vocab_size,
        "src_vocab_size": tokenizer.src_vocab_size if separate else 0,
    }
    for name, size in asked.items():
        if size and name in have and size != have[name]:
            raise ConfigError(
                f"{name}={size}, but the {option} folder {folder} has a {have[name]}-piece "
                "vocabulary, which the model takes: drop the size option, or prepare the data "
                "again with it"
            )


def check_vocab_layout(folder: str | Path, layout: str | None, option: str) -> None:
    """Check a ``--vocab-layout`` typed on the command line (``None`` = not typed) against
    the vocabulary of ``folder`` (a ``--data`` or ``--init-from`` folder), which the model
    must take: one that disagrees was silently ignored (joint asked of a separate folder) or
    reported as a size problem (separate asked of a joint one).

    Raises:
        ConfigError: the layouts differ (both named, with ``option``'s folder and the way out).
    """
    have = vocab_layout(folder)
    if layout is None or layout == have or have == "marian":  # an imported model: its own check
        return
    redo = "prepare the data again with it" if option == "--data" else "train a new model"
    raise ConfigError(
        f"--vocab-layout {layout}, but the {option} folder {folder} has a {have} vocabulary "
        f"({', '.join(LAYOUT_FILES[have])}), which the model takes: drop --vocab-layout, or "
        f"{redo}"
    )


def vocab_layout(folder: str | Path) -> str:
    """The layout of the tokenizer files in ``folder``: ``joint``, ``separate`` or ``marian``.

    A SentencePiece ``.model`` file given instead of a folder is ``joint``, and so is a
    folder with none of them (loading it then names the missing ``spm.model``).
    """
    folder = Path(folder)
    if folder.is_file() or (folder / JOINT_SPM).is_file():
        return "joint"
    if (folder / SRC_SPM).is_file() or (folder / TGT_SPM).is_file():
        return "separate"
    return "marian" if (folder / VOCAB_FILE).is_file() else "joint"


def tokenizer_files(folder: str | Path) -> list[str]:
    """Names of the tokenizer files in a model, data or export folder (see the layouts in
    the module docstring)."""
    return list(LAYOUT_FILES[vocab_layout(folder)])


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer of a model folder, data folder or CTranslate2 folder ``nmt export``
    wrote: a :class:`~nmt.data.tokenizer.Tokenizer` (joint), a :class:`SeparateTokenizer` or an
    imported model's :class:`~nmt.data.marian_vocab.MarianVocabulary`; or of a joint
    SentencePiece ``.model`` file given instead of a folder.

    Raises:
        CheckpointError: no tokenizer file is there (``spm.model`` named), or one is
            missing or unreadable.
    """
    folder = Path(folder)
    if folder.is_file():
        return Tokenizer(folder)
    layout = vocab_layout(folder)
    if layout == "separate":
        return SeparateTokenizer(folder / SRC_SPM, folder / TGT_SPM)
    if layout == "marian":
        return MarianVocabulary(folder)
    return Tokenizer(folder / JOINT_SPM)


def train_vocab(
    src_text: Iterable[str],
    tgt_text: Iterable[str],
    folder: str | Path,
    vocab_size: int,
    src_vocab_size: int = 0,
) -> Tokenizer:
    """Train the SentencePiece model(s) of a new folder and write them there.

    Args:
        src_text / tgt_text: source and target training lines, each read once as a stream.
        vocab_size: pieces of the joint model, or of the target model when
            ``src_vocab_size`` is set.
        src_vocab_size: 0 trains one joint model on both sides (``spm.model``); otherwise
            a source model of this many pieces (``spm.src.model``) on the source lines and a
            target model of ``vocab_size`` pieces (``spm.tgt.model``) on the target lines.

    Raises:
        InputError: too little text for a vocabulary size (see
            :func:`~nmt.data.tokenizer.train_tokenizer`).
    """
    folder = Path(folder)
    if not src_vocab_size:
        return train_tokenizer(_chain(src_text, tgt_text), folder / JOINT_SPM, vocab_size)
    train_tokenizer(src_text, folder / SRC_SPM, src_vocab_size)
    train_tokenizer(tgt_text, folder / TGT_SPM, vocab_size)
    return SeparateTokenizer(folder / SRC_SPM, folder / TGT_SPM)


def _chain(*texts: Iterable[str]) -> Iterable[str]:
    for text in texts:
        yield from text


def copy_vocab(source: str | Path, folder: str | Path) -> list[str]:
    """Copy a vocabulary into ``folder``, each file atomically; returns the names written.
    nmt's SentencePiece files of another layout in ``folder`` are removed, so that the folder
    reads as the copied layout.

    Args:
        source: a joint SentencePiece ``.model`` file (written as ``spm.model``), or a
            folder whose tokenizer files (any layout) are copied under their names.

    Raises:
        CheckpointError: ``source`` is neither a file nor a folder holding a tokenizer.
    """
    source, folder = Path(source), Path(folder)
    if source.is_file():
        pairs = [(source, JOINT_SPM)]
    else:
        names = tokenizer_files(source)
        for name in names:
            if not (source / name).is_file():
                raise CheckpointError(f"{source / name}: SentencePiece model not found")
        pairs = [(source / name, name) for name in names]
    for path, name in pairs:
        data = path.read_bytes()
        atomic_write(folder / name, lambda f, data=data: f.write(data))  # type: ignore[misc]
    written = [name for _, name in pairs]
    for name in (JOINT_SPM, SRC_SPM, TGT_SPM):  # another layout's, left from an earlier run
        if name not in written:
            (folder / name).unlink(missing_ok=True)
    return written


def check_same_vocab(folders: Sequence[Path], why: str) -> None:
    """Check that the folders hold the same tokenizer files, byte for byte (the same
    pieces under the same ids).

    Args:
        why: what needs them equal, ending the error message (e.g. "the models of an
            ensemble need one vocabulary").

    Raises:
        ConfigError: another layout, or two files differ (both named).
        CheckpointError: a file is missing.
    """
    first = Path(folders[0])
    names = tokenizer_files(first)
    for other in map(Path, folders[1:]):
        if tokenizer_files(other) != names:
            raise ConfigError(
                f"{first} has a {vocab_layout(first)} vocabulary, {other} a "
                f"{vocab_layout(other)} one: {why}"
            )
        for name in names:
            if not (other / name).is_file():
                raise CheckpointError(f"{other / name}: SentencePiece model not found")
            if (other / name).read_bytes() != (first / name).read_bytes():
                raise ConfigError(
                    f"{first / name} and {other / name} are different SentencePiece models: {why}"
                )
