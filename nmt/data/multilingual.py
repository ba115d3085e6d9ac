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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmt.data.parallel import ParallelData, encode_parallel, read_parallel
from nmt.data.prepared import META_FILE, open_store
from nmt.data.store import PrepareSummary, prepare
from nmt.data.textio import corpus_path, iter_lines
from nmt.data.tokenizer import Tokenizer, train_tokenizer
from nmt.data.vocab import JOINT_SPM, load_tokenizer, vocab_layout
from nmt.errors import ConfigError, InputError

PAIR = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)-([A-Za-z][A-Za-z0-9_]*)$")


def tag(lang: str) -> str:
    """The target-language tag of ``lang``: ``<2en>``."""
    return f"<2{lang}>"


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


def split_pair(pair: str) -> tuple[str, str]:
    """``"de-en"`` → ``("de", "en")``."""
    src, tgt = pair.split("-")
    return src, tgt


def target_langs(pairs: Sequence[str]) -> list[str]:
    """The target languages of ``pairs``, sorted."""
    return sorted({split_pair(p)[1] for p in pairs})


def marian_target_langs(tokenizer: Tokenizer) -> list[str]:
    """The languages of an imported multi-target Marian model's ``>>lang<<`` pieces
    (:attr:`nmt.data.marian_vocab.MarianVocabulary.target_tags`), in vocabulary order; ``[]``
    for any other tokenizer."""
    return [tag[2:-2] for tag in getattr(tokenizer, "target_tags", None) or []]


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


class TaggedTokenizer(Tokenizer):
    """A tokenizer whose sources start with a target-language tag id.

    ``encode`` and ``pieces`` prepend the tag (``n_tag_ids`` = 1: the tag is no word of the
    line); everything else is the wrapped tokenizer's.

    Args:
        base: the model's tokenizer; lang: the target language.
        piece: the tag's piece: ``<2lang>`` (nmt's multilingual models) by default, or an
            imported multi-target Marian model's ``>>lang<<``.

    Raises:
        ConfigError: the vocabulary has no such piece.
    """

    def __init__(self, base: Tokenizer, lang: str, piece: str | None = None):  # wraps base
        self.base, self.lang, self.tag = base, lang, piece or tag(lang)
        self.path, self.sp = base.path, base.sp
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (
            base.pad_id,
            base.unk_id,
            base.bos_id,
            base.eos_id,
        )
        vocabulary = base.source_vocabulary()
        if self.tag not in vocabulary:
            raise ConfigError(f"{base.path}: the vocabulary has no {self.tag} tag")
        self.tag_id = vocabulary.index(self.tag)
        self.n_tag_ids = 1

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    @property
    def src_vocab_size(self) -> int:
        return self.base.src_vocab_size

    def vocabulary(self) -> list[str]:
        return self.base.vocabulary()

    def source_vocabulary(self) -> list[str]:
        return self.base.source_vocabulary()

    def piece(self, i: int) -> str:
        return self.base.piece(i)

    def source_piece(self, i: int) -> str:
        return self.base.source_piece(i)

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Source ids of each line after the tag id, without EOS."""
        return [[self.tag_id, *ids] for ids in self.base.encode(lines)]

    def encode_target(self, lines: Sequence[str]) -> list[list[int]]:
        return self.base.encode_target(lines)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.base.decode(ids)

    def pieces(self, line: str) -> list[str]:
        """The source pieces of one line, the tag first."""
        return [self.tag, *self.base.pieces(line)]


def for_target(
    tokenizer: Tokenizer,
    pairs: Sequence[str],
    tgt_lang: str | None,
    model_tgt: str | None = None,
) -> Tokenizer:
    """The tokenizer to translate into ``tgt_lang`` with.

    - A multilingual model (``pairs``): tagged with ``<2tgt_lang>``; without ``tgt_lang``,
      with its one target language's tag, or untagged when it has several (each line then
      carries its tag: :func:`checked_tags`).
    - An imported multi-target Marian model (``>>xx<<`` pieces in its vocabulary): tagged
      with ``>>tgt_lang<<``; without ``tgt_lang``, with its one tag, or untagged when it has
      several (each line then starts with its tag, as Hugging Face's ``MarianTokenizer``
      reads it).
    - Any other model: ``tokenizer`` itself; ``tgt_lang``, if given, must be its
      ``model_tgt``.

    Raises:
        ConfigError: ``tgt_lang`` not one of the model's (the error lists them).
    """
    marian_langs = marian_target_langs(tokenizer)
    if not pairs and not marian_langs:
        if tgt_lang is not None and model_tgt and tgt_lang != model_tgt:
            raise ConfigError(f"--tgt-lang {tgt_lang}: the model translates into {model_tgt} only")
        return tokenizer
    langs = target_langs(pairs) if pairs else marian_langs
    if tgt_lang is None:
        if len(langs) > 1:
            return tokenizer  # each line carries its tag (checked_tags)
        tgt_lang = langs[0]
    if tgt_lang not in langs:
        raise ConfigError(
            f"--tgt-lang {tgt_lang}: the model translates into {', '.join(langs)} only"
        )
    return TaggedTokenizer(tokenizer, tgt_lang, None if pairs else f">>{tgt_lang}<<")


@dataclass
class Targets:
    """A model's target languages: the source tokenizer that translates into each, the
    directions it serves, and its target tags by source id.

    Attributes:
        base: the model's own (untagged) tokenizer; pairs: a multilingual model's pairs.
        model_src / model_tgt: the languages of its ``config.json`` (``None`` when unknown).
        tokenizers: by target language, the tokenizer that tags sources for it.
        directions: ``(src, tgt)`` language codes of every direction (``und`` for a source
            language nobody recorded, ISO 639's "undetermined").
        tags: source id → language of every target tag (``<2xx>`` or Marian's ``>>xx<<``);
            empty for a model of one direction without tags.
    """

    base: Tokenizer
    pairs: list[str]
    model_src: str | None
    model_tgt: str | None
    tokenizers: dict[str, Tokenizer] = field(default_factory=dict)
    directions: list[tuple[str, str]] = field(default_factory=list)
    tags: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pairs:
            langs = target_langs(self.pairs)
            self.directions = [split_pair(p) for p in self.pairs]
        else:
            langs = marian_target_langs(self.base) or [self.model_tgt or "und"]
            self.directions = [(self.model_src or "und", lang) for lang in langs]
        for lang in langs:
            tok = for_target(self.base, self.pairs, lang, self.model_tgt)
            self.tokenizers[lang] = tok
            if isinstance(tok, TaggedTokenizer):
                self.tags[tok.tag_id] = lang

    def tokenizer(self, tgt_lang: str | None) -> Tokenizer:
        """:func:`for_target`'s tokenizer for ``tgt_lang`` (one made at load).

        Raises:
            ConfigError: a ``tgt_lang`` the model does not translate into (names them).
        """
        if tgt_lang is None:
            return for_target(self.base, self.pairs, None, self.model_tgt)
        if tgt_lang not in self.tokenizers:
            raise ConfigError(
                f"tgt_lang {tgt_lang}: the model translates into {', '.join(self.tokenizers)}, "
                f"not {tgt_lang!r}"
            )
        return self.tokenizers[tgt_lang]


def checked_tags(
    ids: list[list[int]], tokenizer: Tokenizer, tags: dict[int, str], first_line: int = 1
) -> list[list[int]]:
    """Source ids with exactly one target tag where the model needs one, and none for a
    blank line.

    - A line of no text (empty, blanks, or only a tag) is ``[]``: it is not searched and
      its translation is empty, whatever the tag.
    - ``tokenizer`` prepends a tag and the line starts with one too: the same tag is kept
      once; another is refused.
    - An untagged ``tokenizer`` of a model with several target languages: each line must
      start with one of its tags.

    Raises:
        InputError: two different tags, or a line without one where one is needed (names
            the line, counted from ``first_line``, and the choices).
    """
    tagged = tokenizer.n_tag_ids
    out = []
    for number, x in enumerate(ids, start=first_line):
        if not tags:
            out.append(x)
            continue
        lead = tagged
        while lead < len(x) and x[lead] in tags:
            lead += 1
        if lead == len(x):  # no text: an empty translation, never an invented one
            out.append([])
            continue
        if tagged and lead > 1:
            if any(t != x[0] for t in x[1:lead]):
                raise InputError(
                    f"input line {number} starts with the target tag "
                    f"{tokenizer.source_piece(x[1])}, and the target language asked for "
                    f"(--tgt-lang, tgt_lang) adds {tokenizer.source_piece(x[0])}: drop one"
                )
            x = [x[0], *x[lead:]]
        elif not tagged and lead == 0:
            choices = ", ".join(sorted(set(tags.values())))
            raise InputError(
                f"input line {number}: the model translates into {choices}; choose one with "
                f"--tgt-lang (tgt_lang in the server), or start the line with its tag"
            )
        out.append(x)
    return out


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
