"""Vocabulary shortlists: search over the target pieces a batch's sources make likely.

A lexical shortlist (Marian's ``--shortlist``, Junczys-Dowmunt et al. 2018, "Marian:
Cost-effective high-quality neural machine translation in C++", §4; CTranslate2's vocabulary
map, ``use_vmap``) lists, for each source piece, the target pieces most associated with it.
A batch then searches over the union of its sources' lists, plus pieces that are always
candidates: the most frequent target pieces, the special tokens (PAD, UNK, BOS, EOS) and any
forced target-prefix pieces. The output projection and its softmax are computed over that
subset only (:meth:`nmt.model.transformer.Transformer.output_rows`), which on a small model is
a large part of each decoding step.

Marian builds its lists from word alignments (fast_align, then ``extract_lex`` for
``p(t | s)``). Here the association is read from sentence co-occurrence, with no aligner: the
Dice coefficient ``2 c(s, t) / (c(s) + c(t))`` of source piece ``s`` and target piece ``t``,
where ``c`` counts the sentence pairs containing them (Dice 1945; the co-occurrence model of
Och & Ney 2003, "A Systematic Comparison of Various Statistical Alignment Models", §2.5). Unlike
the conditional ``c(s, t) / c(s)``, it does not rank the most frequent target pieces ("a",
".") first for every source piece: those are covered by ``frequent`` instead.

The shortlist of a model folder is ``shortlist.safetensors``: ``candidates`` ``(src_vocab,
best)`` int32 target ids, best first, -1 where a source piece has fewer, and ``always``
``(n,)`` int32 sorted target ids; its metadata records how it was built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from nmt.config import ModelConfig
from nmt.config_file import from_dict
from nmt.data.textio import corpus_path, count_lines, iter_parallel
from nmt.data.tokenizer import Tokenizer
from nmt.data.vocab import load_tokenizer
from nmt.errors import CheckpointError, ConfigError, InputError
from nmt.fileio import FORMAT_VERSION, atomic_write
from nmt.model.checkpoint import CONFIG_FILE, read_config

SHORTLIST_FILE = "shortlist.safetensors"
VMAP_FILE = "vmap.txt"  # CTranslate2's vocabulary map, read from its model folder
CHUNK_LINES = 10_000  # sentence pairs tokenized and counted together
DEFAULT_BEST, DEFAULT_FREQUENT = 50, 100
MISSING_HINT = "build one with nmt shortlist -m {folder} --train PREFIX, or drop --shortlist"

# progress(sentence pairs read, pairs in all or None)
ProgressFn = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Shortlist:
    """The candidate target pieces of each source piece, and those always allowed.

    Attributes:
        candidates: ``(src_vocab, best)`` int64 target ids, most associated first, -1 where a
            source piece has fewer (or never occurred).
        always: ``(n,)`` int64 sorted target ids allowed in every batch: the special tokens
            and the most frequent target pieces.
        info: how it was built (``best``, ``frequent``, ``method``, ``train``, ``pairs``).
    """

    candidates: torch.Tensor
    always: torch.Tensor
    info: dict[str, str]

    def batch_vocab(
        self,
        src: torch.Tensor,
        prefixes: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        """The target ids one batch searches over: the union of its sources' candidates, the
        ``always`` ids and every target-prefix id, sorted, as CTranslate2's vocabulary map
        gives them (without its padding to a multiple of a few ids).

        Args:
            src: the batch's source ids, any shape (EOS and PAD have no candidates).
            prefixes: target-prefix ids of each sentence (forced, so always candidates).

        Returns:
            ``(n,)`` int64 on ``src``'s device, sorted and unique.
        """
        ids = torch.unique(src.detach().cpu())
        rows = self.candidates.index_select(0, ids).flatten()
        parts = [rows[rows >= 0], self.always]
        if prefixes:
            parts.append(torch.tensor([i for p in prefixes for i in p], dtype=torch.long))
        return torch.unique(torch.cat(parts)).to(src.device)


@dataclass(frozen=True)
class OutputVocab:
    """The target ids the columns of search's log-probabilities stand for: the whole
    vocabulary (``ids`` ``None``: column ``i`` is id ``i``), or a vocabulary shortlist's
    sorted ``(n,)`` ids (column ``j`` is id ``ids[j]``). Search picks columns and keeps ids:
    the history, the decoder's input and the results. ``pad``, ``bos``, ``eos``: the columns
    of those tokens (:meth:`of`)."""

    ids: torch.Tensor | None
    pad: int
    bos: int
    eos: int

    @classmethod
    def of(cls, ids: torch.Tensor | None, cfg: Any) -> OutputVocab:
        """For target ids ``ids`` (``None`` = all) of a model whose ``cfg`` gives its
        ``pad_id``, ``bos_id`` and ``eos_id`` (which ``ids`` must hold)."""
        specials = [cfg.pad_id, cfg.bos_id, cfg.eos_id]
        if ids is not None:
            specials = torch.searchsorted(ids, torch.tensor(specials, device=ids.device)).tolist()
        return cls(ids, *specials)

    def columns(self, tokens: torch.Tensor | None) -> torch.Tensor | None:
        """The columns of ``tokens`` (any shape; -1, no token, stays -1), e.g. a prefix."""
        if self.ids is None or tokens is None:
            return tokens
        found = torch.searchsorted(self.ids, tokens.clamp(min=0))
        return torch.where(tokens >= 0, found, tokens)

    def tokens(self, columns: torch.Tensor) -> torch.Tensor:
        """The target ids of ``columns`` (any shape)."""
        return columns if self.ids is None else self.ids[columns]


def build_shortlist(
    folder: str | Path,
    train_prefix: str | Path,
    best: int = DEFAULT_BEST,
    frequent: int = DEFAULT_FREQUENT,
    progress: ProgressFn | None = None,
) -> Shortlist:
    """Build a model folder's shortlist from a training corpus (module docstring: Dice
    coefficient over sentence co-occurrence) and save it as ``FOLDER/shortlist.safetensors``.

    Args:
        folder: a model or run folder (its ``config.json`` names the languages; its
            SentencePiece model(s) tokenize the corpus, as ``nmt train`` does).
        train_prefix: ``PREFIX.SRC`` / ``PREFIX.TGT`` (``.gz`` or not), one sentence a line.
        best: candidates kept per source piece (K).
        frequent: the N most frequent target pieces (by token count), always candidates.
        progress: called after each chunk of sentence pairs (:data:`ProgressFn`).

    Returns:
        The shortlist, as saved.

    Raises:
        ConfigError: ``best`` < 1 or ``frequent`` < 0, a config without languages, or a
            multilingual model (its sources are tagged per direction; build shortlists for
            one language pair).
        InputError: a corpus file missing, not UTF-8, of another line count, or empty.
        CheckpointError: the folder has no readable config or SentencePiece model.
    """
    if best < 1 or frequent < 0:
        raise ConfigError(f"--best {best} must be 1 or more and --frequent {frequent} 0 or more")
    folder = Path(folder)
    config = read_config(folder)
    if config.get("pairs"):
        raise ConfigError(
            f"{folder}: a multilingual model (pairs {', '.join(config['pairs'])}); shortlists "
            "are built for models of one language pair"
        )
    cfg = from_dict(ModelConfig, config["model"], f"{folder / CONFIG_FILE} [model]")
    tokenizer = load_tokenizer(folder)
    src_lang, tgt_lang = config.get("src_lang"), config.get("tgt_lang")
    if not src_lang or not tgt_lang:
        raise ConfigError(
            f"{folder / CONFIG_FILE}: no src_lang/tgt_lang, which name the corpus files "
            "PREFIX.SRC and PREFIX.TGT; add them to the file"
        )
    total = count_lines(corpus_path(train_prefix, src_lang))
    counts = _count(tokenizer, iter_parallel(train_prefix, src_lang, tgt_lang), total, progress)
    if counts.pairs == 0:
        raise InputError("corpus is empty", corpus_path(train_prefix, src_lang))
    candidates = counts.best_by_dice(best)
    order = np.lexsort((np.arange(counts.tgt_tokens.size), -counts.tgt_tokens))
    common = order[: min(frequent, int((counts.tgt_tokens > 0).sum()))]
    specials = [cfg.pad_id, tokenizer.unk_id, cfg.bos_id, cfg.eos_id]
    always = np.unique(np.concatenate([common, np.array(specials)]))
    info = {
        "format_version": str(FORMAT_VERSION),
        "method": "dice",
        "best": str(best),
        "frequent": str(frequent),
        "train": str(train_prefix),
        "pairs": str(counts.pairs),
    }
    shortlist = Shortlist(
        torch.from_numpy(candidates).long(), torch.from_numpy(always).long(), info
    )
    save_shortlist(folder, shortlist)
    return shortlist


@dataclass
class _Counts:
    """Sentence counts of source pieces, target pieces and their pairs; target token counts."""

    src: np.ndarray  # (src_vocab,) sentences containing each source piece
    tgt: np.ndarray  # (vocab,) sentences containing each target piece
    tgt_tokens: np.ndarray  # (vocab,) occurrences of each target piece
    keys: np.ndarray  # (n,) sorted s * vocab + t of the co-occurring pairs
    joint: np.ndarray  # (n,) sentences containing both
    pairs: int = 0

    def add(self, keys: np.ndarray) -> None:
        """Merge one chunk's co-occurrence keys (one per sentence and piece pair)."""
        merged, inverse = np.unique(np.concatenate([self.keys, keys]), return_inverse=True)
        weights = np.concatenate([self.joint, np.ones(keys.size, dtype=np.int64)])
        self.keys, self.joint = merged, np.bincount(inverse, weights, merged.size).astype(np.int64)

    def best_by_dice(self, best: int) -> np.ndarray:
        """``(src_vocab, best)`` int32: each source piece's ``best`` target pieces by Dice
        coefficient (ties: the lower id first), -1 where fewer co-occur."""
        vocab = self.tgt.size
        s, t = self.keys // vocab, self.keys % vocab
        dice = 2.0 * self.joint / (self.src[s] + self.tgt[t])
        order = np.lexsort((t, -dice, s))
        s, t = s[order], t[order]
        starts = np.searchsorted(s, s, side="left")  # first entry of each entry's source
        rank = np.arange(s.size) - starts
        keep = rank < best
        table = np.full((self.src.size, best), -1, dtype=np.int32)
        table[s[keep], rank[keep]] = t[keep]
        return table


def _count(
    tokenizer: Tokenizer,
    pairs: Iterable[tuple[str, str]],
    total: int,
    progress: ProgressFn | None,
) -> _Counts:
    """Count a corpus' ``(source, target)`` line pairs in chunks of :data:`CHUNK_LINES`."""
    vocab = tokenizer.vocab_size
    counts = _Counts(
        np.zeros(tokenizer.src_vocab_size, dtype=np.int64),
        np.zeros(vocab, dtype=np.int64),
        np.zeros(vocab, dtype=np.int64),
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.int64),
    )
    chunk: list[tuple[str, str]] = []

    def flush() -> None:
        src_ids = tokenizer.encode([s for s, _ in chunk])
        tgt_ids = tokenizer.encode_target([t for _, t in chunk])
        keys = []
        for s, t in zip(src_ids, tgt_ids):
            us, ut = np.unique(np.asarray(s, dtype=np.int64)), np.unique(np.asarray(t, np.int64))
            counts.src[us] += 1
            counts.tgt[ut] += 1
            keys.append((us[:, None] * vocab + ut[None, :]).ravel())
        tokens = np.fromiter((i for t in tgt_ids for i in t), dtype=np.int64)
        counts.tgt_tokens += np.bincount(tokens, minlength=vocab)
        counts.add(np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64))
        counts.pairs += len(chunk)
        chunk.clear()
        if progress is not None:
            progress(counts.pairs, total)

    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == CHUNK_LINES:
            flush()
    if chunk:
        flush()
    return counts


def shortlist_path(folder: str | Path) -> Path:
    """Where a model folder's shortlist is: ``FOLDER/shortlist.safetensors``."""
    return Path(folder) / SHORTLIST_FILE


def save_shortlist(folder: str | Path, shortlist: Shortlist) -> None:
    """Write ``shortlist`` into a model folder, atomically (:data:`SHORTLIST_FILE`)."""
    tensors = {
        "candidates": shortlist.candidates.to(torch.int32).contiguous(),
        "always": shortlist.always.to(torch.int32).contiguous(),
    }
    blob = st_save(tensors, metadata=shortlist.info)
    atomic_write(shortlist_path(folder), lambda f: f.write(blob))


def load_shortlist(folder: str | Path, cfg: ModelConfig) -> Shortlist:
    """The shortlist of a model folder, checked against its model (whose PAD, BOS and EOS
    ids are always candidates, whatever the file says).

    Raises:
        CheckpointError: no shortlist in the folder (says how to build one), an unreadable
            file, or one built for another vocabulary (other sizes).
    """
    path = shortlist_path(folder)
    if not path.is_file():
        raise CheckpointError(f"{path}: no shortlist; " + MISSING_HINT.format(folder=folder))
    try:
        with safe_open(str(path), framework="pt") as f:
            info = dict(f.metadata() or {})
            candidates, always = f.get_tensor("candidates").long(), f.get_tensor("always").long()
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable shortlist ({exc})") from None
    rows = cfg.src_vocab_size or cfg.vocab_size
    ids = torch.cat([candidates.flatten(), always])
    if candidates.dim() != 2 or candidates.size(0) != rows or int(ids.max()) >= cfg.vocab_size:
        raise CheckpointError(
            f"{path}: built for another vocabulary ({tuple(candidates.shape)} candidates, the "
            f"model has {rows} source and {cfg.vocab_size} target pieces); "
            + MISSING_HINT.format(folder=folder)
        )
    specials = torch.tensor([cfg.pad_id, cfg.bos_id, cfg.eos_id])  # search needs their columns
    return Shortlist(candidates, torch.unique(torch.cat([always, specials])), info)


def write_vmap(shortlist: Shortlist, tokenizer: Tokenizer, path: str | Path) -> None:
    """Write ``shortlist`` as CTranslate2's vocabulary map (``vmap.txt``): one line per source
    piece that has candidates, ``piece<TAB>target pieces separated by spaces``, and a line
    with an empty source, the pieces always allowed. CTranslate2's ``translate_batch(...,
    use_vmap=True)`` then searches each batch over the union of its sources' lines, the
    empty line's pieces and its own special tokens."""
    src_pieces, tgt_pieces = tokenizer.source_vocabulary(), tokenizer.vocabulary()
    lines = ["\t" + " ".join(tgt_pieces[i] for i in shortlist.always.tolist())]
    for s, row in enumerate(shortlist.candidates.tolist()):
        ids = [i for i in row if i >= 0]
        if ids:
            lines.append(src_pieces[s] + "\t" + " ".join(tgt_pieces[i] for i in ids))
    text = "".join(line + "\n" for line in lines)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
