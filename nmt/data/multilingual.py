"""Multilingual models: one model for several translation directions (Johnson et al. 2017).

A multilingual run trains on several language pairs (``--pairs de-en,fr-en,cs-en``) with one
joint SentencePiece model learned on every language's text. A target-language tag ``<2xx>``,
a user-defined SentencePiece symbol (always one piece), is prepended to every source as an
id, so the model learns which language to produce; ``nmt translate --tgt-lang xx`` prepends
the same tag (:class:`TaggedTokenizer`).

Each pair is prepared into its own data folder (``DIR/data/SRC-TGT``, :mod:`nmt.data.store`),
all encoded with the one SentencePiece model. Batches mix the pairs by temperature-based
sampling (Arivazhagan et al. 2019, §4.2): pair ``i`` of ``n_i`` examples is drawn with
probability ``p_i ∝ (n_i / N) ** (1 / T)``; ``T = 1`` follows the data, larger ``T`` flattens
the distribution towards low-resource pairs (``T = 5`` is common). An epoch
(:class:`MultiCorpus`) holds every example of the pair with the largest ``n_i / p_i`` once
and the others repeated to their share, fixed for the run (from its seed), so that batching
is planned once and a resumed run continues exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmt.data.parallel import ParallelData, encode_parallel, read_parallel
from nmt.data.prepared import META_FILE, open_store
from nmt.data.store import PrepareSummary, prepare
from nmt.data.targets import TaggedTokenizer, split_pair, tag, target_langs
from nmt.data.textio import corpus_path, iter_lines
from nmt.data.tokenizer import Tokenizer, train_tokenizer
from nmt.data.vocab import JOINT_SPM, load_tokenizer, vocab_layout
from nmt.errors import ConfigError, InputError

PAIR = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)-([A-Za-z][A-Za-z0-9_]*)$")


def parse_pairs(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"de-en,fr-en"`` (or a list of such) → ``("de-en", "fr-en")``.

    Raises:
        ConfigError: a pair not of the form ``SRC-TGT``, a pair of one language, a repeated
            pair, or fewer than one.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    pairs = tuple(item.strip() for item in items if item.strip())
    if not pairs:
        raise ConfigError("pairs: give at least one language pair, e.g. --pairs de-en,fr-en")
    for pair in pairs:
        match = PAIR.match(pair)
        if match is None or match.group(1) == match.group(2):
            raise ConfigError(
                f"pairs: {pair!r} is not a pair of two languages SRC-TGT (e.g. de-en)"
            )
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"pairs: {','.join(pairs)} names a pair twice")
    return pairs


def pair_prefix(prefix: str | Path, pair: str) -> str:
    """The corpus prefix of ``pair``: ``PREFIX.SRC-TGT`` when ``PREFIX.SRC-TGT.SRC[.gz]``
    exists (fairseq's naming, for corpora that differ per pair), else ``PREFIX`` (one
    multi-way parallel corpus, ``PREFIX.LANG``, as Multi30k)."""
    src, _ = split_pair(pair)
    own = f"{prefix}.{pair}"
    try:
        corpus_path(own, src)
    except InputError:
        return str(prefix)
    return own


def sampling_probabilities(sizes: Sequence[int], temperature: float) -> np.ndarray:
    """``(n_pairs,)`` temperature-based sampling probabilities ``p_i ∝ (n_i / N)^(1/T)``
    (Arivazhagan et al. 2019).

    Raises:
        ConfigError: ``temperature`` not positive, or a pair with no example.
    """
    if temperature <= 0:
        raise ConfigError(f"pair_sampling_temperature={temperature} must be positive")
    n = np.asarray(sizes, dtype=np.float64)
    if (n <= 0).any():
        raise ConfigError("every language pair needs at least one training example")
    weights = (n / n.sum()) ** (1.0 / temperature)
    return weights / weights.sum()


def epoch_counts(sizes: Sequence[int], temperature: float) -> list[int]:
    """Examples of each pair in one epoch: ``p_i × E`` with ``E = max(n_i / p_i)``, so that
    no pair is cut and the shares are the sampling probabilities."""
    p = sampling_probabilities(sizes, temperature)
    epoch = max(n / q for n, q in zip(sizes, p))
    return [max(n, int(round(q * epoch))) for n, q in zip(sizes, p)]


class MultiCorpus:
    """The training examples of several pairs, each source led by its target tag id, in the
    proportions of :func:`epoch_counts` (a :class:`nmt.data.parallel.Corpus`).

    Args:
        corpora: one corpus per pair (e.g. :class:`nmt.data.store.ParallelStore`).
        tag_ids: the tag id prepended to each pair's sources.
        temperature: the sampling temperature ``T``; seed: picks the repeated remainder.

    Attributes:
        counts: examples of each pair in an epoch.
    """

    def __init__(
        self, corpora: Sequence[Any], tag_ids: Sequence[int], temperature: float, seed: int
    ):
        self.corpora, self.tag_ids = list(corpora), list(tag_ids)
        sizes = [len(c) for c in corpora]
        self.counts = epoch_counts(sizes, temperature)
        rng = np.random.default_rng(seed)
        which, local = [], []
        for i, (n, m) in enumerate(zip(sizes, self.counts)):
            rest = np.sort(rng.choice(n, m % n, replace=False))
            idx = np.concatenate([np.tile(np.arange(n, dtype=np.int64), m // n), rest])
            which.append(np.full(len(idx), i, dtype=np.int32))
            local.append(idx)
        self.which, self.local = np.concatenate(which), np.concatenate(local)
        self._src_lens = np.concatenate(
            [np.asarray(c.src_lens)[i] + 1 for c, i in zip(corpora, local)]
        )
        self._tgt_lens = np.concatenate([np.asarray(c.tgt_lens)[i] for c, i in zip(corpora, local)])

    def __len__(self) -> int:
        return len(self.which)

    @property
    def src_lens(self) -> np.ndarray:
        """``(n,)`` source lengths (tokens, the tag included, no EOS)."""
        return self._src_lens

    @property
    def tgt_lens(self) -> np.ndarray:
        """``(n,)`` target lengths (tokens, no BOS/EOS)."""
        return self._tgt_lens

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The tag id and source ids, and the target ids, of example ``i``."""
        k = int(self.which[i])
        src, tgt = self.corpora[k].pair(int(self.local[i]))
        return np.concatenate([[self.tag_ids[k]], np.asarray(src, dtype=np.int64)]), tgt


@dataclass
class ValidSet:
    """One direction's validation set: its ``name`` (``de-en``), the tokenizer that tags its
    sources, the encoded pairs (for the loss) and the source and reference lines."""

    name: str
    tokenizer: Tokenizer
    data: ParallelData
    src: list[str]
    refs: list[str]


def corpus_files(prefix: str | Path, pairs: Sequence[str]) -> list[Path]:
    """Every pair's source and target file, each once (a multi-way corpus shares them).

    Raises:
        InputError: a file is missing (named).
    """
    files: list[Path] = []
    for pair in pairs:
        for lang in split_pair(pair):
            path = corpus_path(pair_prefix(prefix, pair), lang)
            if path not in files:
                files.append(path)
    return files


ValidText = dict[str, tuple[list[str], list[str]]]  # pair → (source lines, references)


def read_valid_sets(prefix: str | Path, pairs: Sequence[str]) -> ValidText:
    """Each pair's validation source and reference lines (``PREFIX.SRC-TGT.LANG`` or
    ``PREFIX.LANG``, as :func:`pair_prefix`).

    Raises:
        InputError: a missing, non-UTF-8 or mismatched file (named).
    """
    return {pair: read_parallel(pair_prefix(prefix, pair), *split_pair(pair)) for pair in pairs}


def prepare_pairs(
    prefix: str | Path,
    data_dir: Path,
    pairs: Sequence[str],
    spm_path: str | Path | None,
    vocab_size: int,
    max_len: int,
    say: Callable[[str], None],
) -> dict[str, PrepareSummary]:
    """Prepare every pair into ``data_dir/SRC-TGT`` (:func:`nmt.data.store.prepare`), all with one
    joint SentencePiece model: ``spm_path``, or one of ``vocab_size`` pieces trained on
    every language's lines with the target tags as user-defined symbols (``data_dir/
    spm.model``). Pairs already prepared (an interrupted start, a resume) are kept; returns
    the summaries of those prepared now.

    Raises:
        InputError: a corpus file is missing or bad (named). ConfigError: separate
            vocabularies (``spm_path`` a folder of that layout), or a SentencePiece model
            without a target tag.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    tags = [tag(lang) for lang in target_langs(pairs)]
    if spm_path is None:
        spm_path = data_dir / JOINT_SPM
        if not spm_path.is_file():
            files = corpus_files(prefix, pairs)
            say(f"training a {vocab_size}-piece SentencePiece model on {len(files)} files")
            lines = (line for path in files for line in iter_lines(path))
            train_tokenizer(lines, spm_path, vocab_size, user_defined_symbols=tags)
    tokenizer = load_tokenizer(spm_path)
    if vocab_layout(spm_path) != "joint":
        raise ConfigError(
            "a multilingual model has one joint vocabulary: drop --vocab-layout separate"
        )
    for lang in target_langs(pairs):
        TaggedTokenizer(tokenizer, lang)  # raises for a missing tag
    summaries = {}
    for pair in pairs:
        if not (data_dir / pair / META_FILE).is_file():
            summaries[pair] = prepare(
                pair_prefix(prefix, pair),
                data_dir / pair,
                *split_pair(pair),
                spm_path=spm_path,
                max_len=max_len,
                overwrite=True,  # an incomplete one, from an interrupted start
                on_message=say,
            )
    return summaries


def open_pairs(
    data_dir: Path,
    pairs: Sequence[str],
    tokenizer: Tokenizer,
    valid: ValidText,
    train_cfg: Any,
    max_positions: int,
) -> tuple[MultiCorpus, list[ValidSet]]:
    """The training corpus of a multilingual run (its pairs' data folders, mixed by
    ``train_cfg.pair_sampling_temperature``) and one :class:`ValidSet` per pair."""
    tagged = {pair: TaggedTokenizer(tokenizer, split_pair(pair)[1]) for pair in pairs}
    stores = [open_store(data_dir / pair, train_cfg.max_len) for pair in pairs]
    corpus = MultiCorpus(
        stores,
        [tagged[pair].tag_id for pair in pairs],
        train_cfg.pair_sampling_temperature,
        train_cfg.seed,
    )
    sets = []
    for pair in pairs:
        src, refs = valid[pair]
        data = encode_parallel(tagged[pair], src, refs, max_positions - 1)
        sets.append(ValidSet(pair, tagged[pair], data, src, refs))
    return corpus, sets
