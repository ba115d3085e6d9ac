"""The prepared-corpus store: a parallel corpus encoded once into memory-mapped token ids.

``nmt prepare`` (:func:`prepare`) writes a data folder; training maps it read-only
(:func:`open_store`, in :mod:`nmt.data.prepared`), so that training memory does not grow with
the corpus: the offsets and the token ids are mapped, and the operating system pages them
in and out as needed. The layout follows fairseq's ``mmap`` indexed dataset, simplified:

    meta.json            languages, id dtype, counts, filter settings; written last, so a
                         folder without it is incomplete
    spm.model/.vocab     the joint SentencePiece model the ids come from, or
    spm.src.model, spm.tgt.model   one per side (``--vocab-layout separate``; nmt.data.vocab)
    train.LANG.bin       the token ids of every kept sentence, concatenated (no BOS/EOS),
                         little-endian uint16 (int32 when a vocabulary exceeds 65,535)
    train.LANG.idx.npy   int64 offsets, n + 1 of them: sentence i is bin[idx[i]:idx[i + 1]]
    valid.LANG           the validation text as given (UTF-8), when ``--valid`` was given

Encoding runs in worker processes, chunk by chunk (:mod:`nmt.data.encoding`), so preparing
does not hold the corpus in memory either (SentencePiece training samples at most 2M
sentences).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmt.config import ModelConfig, TrainConfig, check_vocab_floor
from nmt.data.encoding import DROP_REASONS, encode_chunks
from nmt.data.prepared import (  # noqa: F401 - re-exported: nmt.data.store is the data folder's API
    META_FILE,
    SPM_FILE,
    STORE_VERSION,
    ParallelStore,
    TokenStore,
    open_store,
    read_meta,
)
from nmt.data.textio import check_line_counts, corpus_path, count_lines, iter_lines, iter_parallel
from nmt.data.tokenizer import Tokenizer
from nmt.data.vocab import (
    JOINT_SPM,
    SRC_SPM,
    TGT_SPM,
    copy_vocab,
    load_tokenizer,
    train_vocab,
    vocab_layout,
)
from nmt.errors import ConfigError, InputError
from nmt.fileio import fsync_dir, removed_on_error, write_json

POOL_MIN_LINES = 100_000  # below this, worker processes cost more than they save


@dataclass
class PrepareSummary:
    """What :func:`prepare` did.

    Attributes:
        out_dir: the data folder.
        lines: sentence pairs read.
        kept: pairs written.
        dropped: pairs dropped, by reason: ``empty`` (a side has no token), ``too_long``
            (a side has more than ``max_len`` tokens), ``ratio`` (token-length ratio above
            ``max_ratio``).
        tokens: tokens written per language (no BOS/EOS).
        valid_lines: validation pairs copied (0 when none were given).
        seconds: wall time.
    """

    out_dir: Path
    lines: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    tokens: dict[str, int] = field(default_factory=dict)
    valid_lines: int = 0
    seconds: float = 0.0


# --- writing a data folder -----------------------------------------------------------------
def prepare(
    train_prefix: str | Path,
    out_dir: str | Path,
    src_lang: str,
    tgt_lang: str,
    *,
    valid_prefix: str | Path | None = None,
    spm_path: str | Path | None = None,
    vocab_size: int = ModelConfig.vocab_size,
    src_vocab_size: int = 0,
    max_len: int = TrainConfig.max_len,
    max_ratio: float = 0.0,
    workers: int = 0,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> PrepareSummary:
    """Encode ``train_prefix`` into a data folder (see the module docstring for its layout).

    Args:
        train_prefix: corpus prefix, ``PREFIX.SRC[.gz]`` and ``PREFIX.TGT[.gz]``.
        out_dir: the data folder (created).
        valid_prefix: validation corpus, copied as text (training translates it for BLEU).
        spm_path: an existing joint SentencePiece model (a ``.model`` file), or a model or
            data folder whose SentencePiece model(s) to use (any layout of
            :mod:`nmt.data.vocab`); otherwise they are trained on the corpus (at most 2M lines
            sampled per model).
        vocab_size: pieces of the joint SentencePiece model trained on source and target
            lines, or of the target's with ``src_vocab_size``.
        src_vocab_size: 0 = one joint model; otherwise the separate layout: a source model
            of this many pieces trained on the source lines, a target model of
            ``vocab_size`` pieces on the target lines.
        max_len: pairs with a side longer than this (tokens) are dropped.
        max_ratio: pairs whose longer side has more than ``max_ratio`` times the tokens of
            the shorter are dropped (0 = no ratio filter), as Moses' clean-corpus-n.
        workers: encoding processes; 0 = one per CPU core (at most 8), or 1 below
            100,000 lines.
        overwrite: replace a data folder that is already complete.
        on_progress: called with (pairs done, pairs in all) after each chunk.
        on_message: called with a line of progress text.

    Raises:
        InputError: missing, non-UTF-8 or mismatched files (file and line named), a folder
            that already holds a store (without ``overwrite``), or no pair left after
            filtering. ConfigError: a vocabulary size under 8, ``max_len`` under 1 or a
            negative ``max_ratio`` (checked before anything is read).
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    check_vocab_floor(vocab_size, src_vocab_size)  # as the model's config requires
    if max_len < 1:
        raise ConfigError(f"max_len={max_len} must be at least 1 (tokens)")
    if not 0 <= max_ratio < math.inf:
        raise ConfigError(f"max_ratio={max_ratio} must be a number >= 0 (0 = no ratio filter)")
    if (out_dir / META_FILE).exists() and not overwrite:
        raise InputError(
            "already holds a prepared corpus; choose another folder or pass --overwrite",
            out_dir,
        )
    n_src = check_corpus(train_prefix, src_lang, tgt_lang)
    src_path = corpus_path(train_prefix, src_lang)
    valid = list(iter_parallel(valid_prefix, src_lang, tgt_lang)) if valid_prefix else []
    if workers <= 0:
        workers = 1 if n_src < POOL_MIN_LINES else min(os.cpu_count() or 1, 8)
    say = on_message or (lambda text: None)

    with removed_on_error(out_dir):  # a failed first prepare leaves no folder behind
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".prepare-") as tmp_name:
            tmp = Path(tmp_name)
            tokenizer = _vocabulary(
                tmp, spm_path, (train_prefix, src_lang, tgt_lang), (vocab_size, src_vocab_size), say
            )
            layout = vocab_layout(tmp)
            largest = max(tokenizer.vocab_size, tokenizer.src_vocab_size)
            dtype = "<u2" if largest <= 65_535 else "<i4"
            summary = PrepareSummary(out_dir, tokens={src_lang: 0, tgt_lang: 0})
            say(f"encoding {n_src:,} sentence pairs with {workers} worker(s)")
            _write_ids(
                iter_parallel(train_prefix, src_lang, tgt_lang),
                tmp,
                (src_lang, tgt_lang),
                (tmp, (max_len, max_ratio, dtype), workers),
                summary,
                lambda done: on_progress(done, n_src) if on_progress else None,
            )
            if summary.kept == 0:
                raise InputError(
                    f"no sentence pair kept (dropped: {summary.dropped}); check the files and "
                    f"--max-len={max_len}",
                    src_path,
                )
            for lang in (src_lang, tgt_lang):
                _write_index(tmp, lang, summary.kept)
            for side, lang in enumerate((src_lang, tgt_lang)):
                if valid:
                    text = "".join(pair[side] + "\n" for pair in valid)
                    (tmp / f"valid.{lang}").write_text(text, encoding="utf-8")
            summary.valid_lines = len(valid)
            summary.seconds = time.monotonic() - start
            # Replace the old store's meta.json first: while files move, the folder is incomplete.
            (out_dir / META_FILE).unlink(missing_ok=True)
            moved = {path.name for path in tmp.iterdir()}
            for name in moved:
                os.replace(tmp / name, out_dir / name)
            for name in {JOINT_SPM, SRC_SPM, TGT_SPM} - moved:  # an old store's other layout
                (out_dir / name).unlink(missing_ok=True)
            settings = {
                "filter": {"max_len": max_len, "max_ratio": max_ratio},
                "source": {"train": str(train_prefix), "valid": valid_prefix and str(valid_prefix)},
            }
            meta = _meta(summary, (src_lang, tgt_lang), dtype, (layout, tokenizer), settings)
            write_json(out_dir / META_FILE, meta)
            fsync_dir(out_dir)
    return summary


def _vocabulary(
    tmp: Path,
    spm_path: str | Path | None,
    corpus: tuple[str | Path, str, str],
    sizes: tuple[int, int],
    say: Callable[[str], None],
) -> Tokenizer:
    """Copy the given SentencePiece model(s) into ``tmp``, or train them on the corpus
    (``(prefix, src_lang, tgt_lang)``) with ``sizes`` ``(vocab_size, src_vocab_size)``."""
    if spm_path is not None:
        copy_vocab(spm_path, tmp)
        return load_tokenizer(tmp)
    prefix, src_lang, tgt_lang = corpus
    vocab_size, src_vocab_size = sizes
    where = f"{corpus_path(prefix, src_lang)} and {corpus_path(prefix, tgt_lang)}"
    if src_vocab_size:
        say(
            f"training a {src_vocab_size}-piece source and a {vocab_size}-piece target "
            f"SentencePiece model on {where}"
        )
    else:
        say(f"training a {vocab_size}-piece SentencePiece model on {where}")
    return train_vocab(
        iter_lines(corpus_path(prefix, src_lang)),
        iter_lines(corpus_path(prefix, tgt_lang)),
        tmp,
        vocab_size,
        src_vocab_size,
    )


def check_corpus(prefix: str | Path, src_lang: str, tgt_lang: str) -> int:
    """Check that a parallel corpus exists and its two files have as many lines (counted
    without decoding, so it is quick on large files); returns that number.

    Raises:
        InputError: a missing file, different line counts (both files named), or no line.
    """
    src_path, tgt_path = corpus_path(prefix, src_lang), corpus_path(prefix, tgt_lang)
    n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
    check_line_counts(src_path, n_src, tgt_path, n_tgt)
    if n_src == 0:
        raise InputError("corpus is empty (no line)", src_path)
    return n_src


def _write_ids(
    pairs: Iterable[tuple[str, str]],
    tmp: Path,
    langs: tuple[str, str],
    encoding: tuple[Path, tuple[int, float, str], int],
    summary: PrepareSummary,
    progress: Callable[[int], None],
) -> None:
    """Append every chunk's ids to ``train.LANG.bin`` and the offsets where its sentences
    end to ``train.LANG.ends`` (raw int64; :func:`_write_index` makes the index of them),
    so that nothing of the corpus's size is held in memory."""
    spm_file, settings, workers = encoding
    with (
        open(tmp / f"train.{langs[0]}.bin", "wb") as f_src,
        open(tmp / f"train.{langs[1]}.bin", "wb") as f_tgt,
        open(tmp / f"train.{langs[0]}.ends", "wb") as e_src,
        open(tmp / f"train.{langs[1]}.ends", "wb") as e_tgt,
    ):
        for chunk in encode_chunks(pairs, spm_file, settings, workers):
            chunk.src_ids.tofile(f_src)
            chunk.tgt_ids.tofile(f_tgt)
            (np.cumsum(chunk.src_lens) + summary.tokens[langs[0]]).tofile(e_src)
            (np.cumsum(chunk.tgt_lens) + summary.tokens[langs[1]]).tofile(e_tgt)
            summary.lines += chunk.lines
            summary.kept += len(chunk.src_lens)
            summary.tokens[langs[0]] += len(chunk.src_ids)
            summary.tokens[langs[1]] += len(chunk.tgt_ids)
            for reason, count in chunk.dropped.items():
                summary.dropped[reason] += count
            progress(summary.lines)
        for f in (f_src, f_tgt):
            f.flush()
            os.fsync(f.fileno())


def _write_index(tmp: Path, lang: str, n: int) -> None:
    """``train.LANG.idx.npy`` (``(n + 1,)`` int64 offsets, 0 first) from the ``n`` sentence
    ends in ``train.LANG.ends``, which is then removed; copied between memory maps (page
    cache, not process memory)."""
    ends_path = tmp / f"train.{lang}.ends"
    idx_path = tmp / f"train.{lang}.idx.npy"
    idx = np.lib.format.open_memmap(idx_path, mode="w+", dtype=np.int64, shape=(n + 1,))
    idx[0] = 0
    if n:
        idx[1:] = np.memmap(ends_path, dtype=np.int64, mode="r")
    idx.flush()
    del idx
    with open(idx_path, "rb+") as f:
        os.fsync(f.fileno())
    ends_path.unlink()


def _meta(summary: PrepareSummary, langs: tuple[str, str], dtype: str,
          vocab: tuple[str, Tokenizer], settings: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The ``meta.json`` record of a data folder; ``vocab``: its layout and tokenizer."""
    layout, tokenizer = vocab
    return {
        "format_version": STORE_VERSION,
        "src_lang": langs[0],
        "tgt_lang": langs[1],
        "dtype": dtype,
        "vocab_layout": layout,
        "vocab_size": tokenizer.vocab_size,
        **({"src_vocab_size": tokenizer.src_vocab_size} if layout == "separate" else {}),
        "pairs": summary.kept,
        "lines": summary.lines,
        "dropped": summary.dropped,
        "tokens": summary.tokens,
        "valid_pairs": summary.valid_lines,
        **settings,
    }
