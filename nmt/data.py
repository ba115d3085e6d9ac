"""Reading parallel text, length filtering and token-based batching.

Corpus files are ``PREFIX.LANG`` or ``PREFIX.LANG.gz``, one sentence per line, UTF-8.
Batches hold about ``batch_tokens`` padded tokens and are built from length-sorted buckets,
then shuffled (as in fairseq and OpenNMT-py), so that little compute is spent on padding.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.errors import InputError
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


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


def read_parallel(prefix: str | Path, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    """Source and target lines of a parallel corpus.

    Raises:
        InputError: a file is missing or not UTF-8, the two files differ in line count (both
            files and counts named), or the corpus is empty.
    """
    src_path, tgt_path = corpus_path(prefix, src_lang), corpus_path(prefix, tgt_lang)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise InputError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "parallel files must have one line per sentence pair"
        )
    if not any(s.strip() for s in src):
        raise InputError("corpus is empty (no non-blank line)", src_path)
    return src, tgt


@dataclass
class ParallelData:
    """Token ids of sentence pairs kept after filtering (no BOS/EOS added yet)."""

    src: list[list[int]]
    tgt: list[list[int]]
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.src)


def encode_parallel(
    tokenizer: Tokenizer, src: Sequence[str], tgt: Sequence[str], max_len: int
) -> ParallelData:
    """Encode pairs and drop those with an empty side or more than ``max_len`` tokens."""
    src_ids, tgt_ids = tokenizer.encode(src), tokenizer.encode(tgt)
    kept = ParallelData([], [])
    for s, t in zip(src_ids, tgt_ids):
        if 0 < len(s) <= max_len and 0 < len(t) <= max_len:
            kept.src.append(s)
            kept.tgt.append(t)
        else:
            kept.dropped += 1
    return kept


def make_batches(
    src_lens: Sequence[int], tgt_lens: Sequence[int], batch_tokens: int, seed: int
) -> list[list[int]]:
    """Group example indices into batches of at most ``batch_tokens`` padded tokens.

    Examples are shuffled, sorted by (target, source) length so that neighbours have similar
    lengths, cut into batches whose ``n * max(src_len + 1, tgt_len + 1)`` stays within
    ``batch_tokens``, and the batch order is shuffled. Deterministic for a given ``seed``.

    Returns:
        Lists of example indices, one per batch.
    """
    rng = random.Random(seed)
    order = list(range(len(src_lens)))
    rng.shuffle(order)
    order.sort(key=lambda i: (tgt_lens[i], src_lens[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = max(src_lens[i], tgt_lens[i]) + 1  # + EOS / BOS
        if current and (len(current) + 1) * max(longest, length) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """Padded tensors of one batch.

    Attributes:
        src: ``(batch, src_len)`` int64, source ids + EOS, right-padded with PAD.
        tgt_in: ``(batch, tgt_len)`` int64, BOS + target ids (decoder input).
        tgt_out: ``(batch, tgt_len)`` int64, target ids + EOS (labels), PAD where padded.
        n_tgt_tokens: non-pad target tokens (the count the loss is averaged over).
    """

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    n_tgt_tokens: int

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.src.to(device, non_blocking=True),
            self.tgt_in.to(device, non_blocking=True),
            self.tgt_out.to(device, non_blocking=True),
            self.n_tgt_tokens,
        )


def pad(seqs: Sequence[Sequence[int]], prefix: int | None = None, suffix: int | None = None):
    """Right-pad id lists into a ``(batch, max_len)`` int64 tensor, adding BOS/EOS if given."""
    extra = (prefix is not None) + (suffix is not None)
    width = max(len(s) for s in seqs) + extra
    out = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids = ([prefix] if prefix is not None else []) + list(seq)
        if suffix is not None:
            ids.append(suffix)
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def collate(data: ParallelData, indices: Sequence[int]) -> Batch:
    """The padded :class:`Batch` of the examples at ``indices``."""
    src = pad([data.src[i] for i in indices], suffix=EOS_ID)
    tgt = [data.tgt[i] for i in indices]
    tgt_in = pad(tgt, prefix=BOS_ID)
    tgt_out = pad(tgt, suffix=EOS_ID)
    return Batch(src, tgt_in, tgt_out, int(sum(len(t) + 1 for t in tgt)))
