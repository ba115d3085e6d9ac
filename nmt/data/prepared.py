"""Reading a prepared data folder (written by :func:`nmt.data.store.prepare`): the folder's
layout constants, its ``meta.json`` (:func:`read_meta`), and the memory-mapped token ids of
its training pairs (:func:`open_store`, :class:`ParallelStore`), which training reads
without loading anything of the corpus's size. The layout is described in :mod:`nmt.data.store`.
Imports neither torch nor the encoding workers' code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nmt.errors import InputError
from nmt.fileio import FORMAT_VERSION, read_versioned_json

STORE_VERSION = FORMAT_VERSION  # checked by nmt.fileio.read_versioned_json
META_FILE = "meta.json"
SPM_FILE = "spm.model"
LENGTH_CHUNK = 1 << 20  # sentences whose lengths are computed at a time (8 MB of int64)


class TokenStore:
    """The memory-mapped token ids of one language.

    Both files are mapped, not read: at 10M sentences the offsets alone are 80 MB per
    language, which then stay page cache (shared, reclaimable) instead of process memory.

    Args:
        bin_path: the ``train.LANG.bin`` file; idx_path: its ``train.LANG.idx.npy`` offsets.
        dtype: the id dtype recorded in ``meta.json``.

    Raises:
        InputError: the two files disagree (a damaged folder).
    """

    def __init__(self, bin_path: Path, idx_path: Path, dtype: str):
        # Plain ndarray views of the mappings: indexing a np.memmap is several times slower.
        self.offsets = np.asarray(np.load(idx_path, mmap_mode="r"))
        self.ids = np.asarray(np.memmap(bin_path, dtype=np.dtype(dtype), mode="r"))
        if len(self.ids) != self.offsets[-1]:
            raise InputError(
                f"holds {len(self.ids)} ids but its index says {self.offsets[-1]}; the data "
                "folder is damaged: run nmt prepare again",
                bin_path,
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """``(n,)`` sentence lengths (tokens, no BOS/EOS), computed from the offsets at each
        access: uint16 (2 bytes a sentence) when the longest fits, else int32. The
        subtraction casts in small buffers, so no int64 copy of the corpus is made."""
        longest = max(
            (int(np.diff(self.offsets[i : i + LENGTH_CHUNK + 1]).max(initial=0))
             for i in range(0, len(self), LENGTH_CHUNK)),
            default=0,
        )  # fmt: skip
        out = np.empty(len(self), dtype=np.uint16 if longest < 2**16 else np.int32)
        np.subtract(self.offsets[1:], self.offsets[:-1], out=out, casting="unsafe")
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sentences at ``rows`` in one pass: ``(total,)`` int64 ids, one sentence after
        another, and ``(count,)`` int64 lengths."""
        starts = self.offsets[rows]
        lens = self.offsets[rows + 1] - starts
        # Position of every id in the store: its sentence's start plus its place in it.
        firsts = np.cumsum(lens) - lens
        where = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(starts - firsts, lens)
        return self.ids[where].astype(np.int64), lens.astype(np.int64)


class ParallelStore:
    """Sentence pairs of a data folder, restricted to those with both sides ≤ ``max_len``.

    Implements the corpus interface of :func:`nmt.data.parallel.collate`: ``len()``,
    ``src_lens``, ``tgt_lens``, ``pair(i)`` and the vectorised ``gather(indices)``. Nothing
    of the corpus's size is held in memory when no pair is left out (the usual case:
    ``filtered_at``, the ``max_len`` the folder was prepared with, is at most ``max_len``);
    otherwise the kept pairs' row numbers.

    Attributes:
        dropped: pairs of the store left out by ``max_len``.
        index: ``(kept,)`` row numbers of the kept pairs, or ``None`` for all of them.

    Raises:
        InputError: the two languages hold different numbers of sentences.
    """

    def __init__(
        self, src: TokenStore, tgt: TokenStore, max_len: int, filtered_at: int | None = None
    ):
        if len(src) != len(tgt):
            raise InputError(f"the two languages hold {len(src)} and {len(tgt)} sentences")
        self.src, self.tgt = src, tgt
        self.index: np.ndarray | None = None
        if filtered_at is None or max_len < filtered_at:
            keep = src.lengths <= max_len
            keep &= tgt.lengths <= max_len
            if not keep.all():
                index_dtype = np.int32 if len(keep) < 2**31 else np.int64
                self.index = np.flatnonzero(keep).astype(index_dtype)
        self.dropped = len(src) - len(self)

    def __len__(self) -> int:
        return len(self.src) if self.index is None else len(self.index)

    @property
    def src_lens(self) -> np.ndarray:
        """``(n,)`` source lengths of the kept pairs (see :attr:`TokenStore.lengths`)."""
        return self._kept(self.src.lengths)

    @property
    def tgt_lens(self) -> np.ndarray:
        """``(n,)`` target lengths of the kept pairs (see :attr:`TokenStore.lengths`)."""
        return self._kept(self.tgt.lengths)

    def _kept(self, lengths: np.ndarray) -> np.ndarray:
        return lengths if self.index is None else lengths[self.index]

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The source and target ids of pair ``i``."""
        row = i if self.index is None else self.index[i]
        return self.src[row], self.tgt[row]

    def gather(
        self, indices: np.ndarray
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """The pairs at ``indices`` (``(count,)`` int) at once, for
        :func:`nmt.data.parallel.collate`: ``((src_ids, src_lens), (tgt_ids, tgt_lens))``, each
        side's ids flat ``(total,)`` int64 (:meth:`TokenStore.gather`)."""
        rows = indices if self.index is None else self.index[indices].astype(np.int64)
        return self.src.gather(rows), self.tgt.gather(rows)


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a data folder.

    Raises:
        InputError: the folder has no ``meta.json`` (missing, or preparing did not finish)
            or one of another format version.
    """
    path = Path(data_dir) / META_FILE
    if not Path(data_dir).is_dir():
        raise InputError("data folder not found; make one with nmt prepare", data_dir)
    try:
        meta = read_versioned_json(
            path,
            "not a complete data folder (no meta.json); run nmt prepare again",
            "run nmt prepare again with this nmt",
        )
    except Exception as exc:  # CheckpointError: report it as the input problem it is
        raise InputError(str(exc)) from None
    return meta


def open_store(data_dir: str | Path, max_len: int) -> ParallelStore:
    """Map the training pairs of a data folder (read-only).

    Raises:
        InputError: an incomplete, damaged or foreign folder.
    """
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    src, tgt = (
        TokenStore(
            data_dir / f"train.{meta[key]}.bin",
            data_dir / f"train.{meta[key]}.idx.npy",
            meta["dtype"],
        )
        for key in ("src_lang", "tgt_lang")
    )
    filtered_at = meta.get("filter", {}).get("max_len")
    return ParallelStore(src, tgt, max_len=max_len, filtered_at=filtered_at)
