"""Reading text files: corpus prefixes, UTF-8 lines (plain or gzipped) with file:line errors.

This module imports neither torch nor numpy, so that worker processes which only read and
tokenize text (``nmt prepare``) start quickly.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

from nmt.errors import InputError


def corpus_path(prefix: str | Path, lang: str) -> Path:
    """The file of ``lang`` for a corpus prefix: ``PREFIX.LANG`` or ``PREFIX.LANG.gz``.

    Raises:
        InputError: neither file exists.
    """
    plain = Path(f"{prefix}.{lang}")
    for candidate in (plain, Path(f"{plain}.gz")):
        if candidate.is_file():
            return candidate
    raise InputError(
        f"corpus file not found (also tried {plain.name}.gz); check the prefix and --src-lang/"
        "--tgt-lang",
        plain,
    )


def iter_lines(path: str | Path) -> Iterator[str]:
    """Stream the lines of a UTF-8 text file (gzipped if it ends in ``.gz``), newlines
    stripped, without holding the file in memory.

    Raises:
        InputError: the file is missing or unreadable, or a line is not valid UTF-8 (names
            file and line).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    yield _strip_line_end(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"not valid UTF-8 (byte {exc.start}); re-encode the file as UTF-8",
                        path,
                        number,
                    ) from None
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a text file", path) from None
    except (OSError, EOFError) as exc:  # e.g. a truncated or fake .gz
        raise InputError(f"cannot read file: {exc}", path) from None


def _strip_line_end(line: str) -> str:
    """Remove one line end (``\\n`` or ``\\r\\n``) and nothing else."""
    if line.endswith("\n"):
        line = line[:-1]
    return line[:-1] if line.endswith("\r") else line


def read_lines(path: str | Path) -> list[str]:
    """All lines of a text file; see :func:`iter_lines`."""
    return list(iter_lines(path))


def count_lines(path: str | Path) -> int:
    """Number of lines of a (possibly gzipped) file, without decoding them."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read file: {exc}", path) from None


def check_line_counts(src_path: Path, n_src: int, tgt_path: Path, n_tgt: int) -> None:
    """The two sides of a parallel corpus must have as many lines.

    Raises:
        InputError: they differ (both files and counts named).
    """
    if n_src != n_tgt:
        raise InputError(
            f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}; parallel files must have "
            "one line per sentence pair"
        )


def iter_parallel(prefix: str | Path, src_lang: str, tgt_lang: str) -> Iterator[tuple[str, str]]:
    """Stream the (source, target) line pairs of ``PREFIX.SRC`` / ``PREFIX.TGT``.

    Raises:
        InputError: a file is missing or not UTF-8, or the files differ in line count (both
            files and the line where one ends are named).
    """
    src_path, tgt_path = corpus_path(prefix, src_lang), corpus_path(prefix, tgt_lang)
    src_lines, tgt_lines = iter_lines(src_path), iter_lines(tgt_path)
    number = 0
    for number, src in enumerate(src_lines, start=1):
        tgt = next(tgt_lines, None)
        if tgt is None:
            raise InputError(
                f"{tgt_path} ends after {number - 1} lines but {src_path} goes on; parallel "
                "files must have one line per sentence pair",
                src_path,
                number,
            )
        yield src, tgt
    if next(tgt_lines, None) is not None:
        raise InputError(
            f"{src_path} ends after {number} lines but {tgt_path} goes on; parallel files must "
            "have one line per sentence pair",
            tgt_path,
            number + 1,
        )
