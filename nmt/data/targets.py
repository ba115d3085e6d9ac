"""Target languages: which languages a model translates into, and the source tokenizer that
asks for each (Johnson et al. 2017's tag before the source: ``<2xx>`` for nmt's multilingual
models, ``>>xx<<`` for imported multi-target Marian models), with the rules every caller
shares for lines that carry a tag themselves or carry no text (:func:`checked_tags`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nmt.data.tokenizer import Tokenizer
from nmt.errors import ConfigError, InputError

WORD_START = "\u2581"  # SentencePiece's word-start piece


def tag(lang: str) -> str:
    """The target-language tag of ``lang``: ``<2en>``."""
    return f"<2{lang}>"


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
      start with one of its tags. With one target language an untagged line is kept as it
      is (loading gives such a model's tokenizer its one tag: :func:`for_target`).

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
        if (
            len(x) > tagged + 1
            and x[tagged + 1] in tags
            and (tokenizer.source_piece(x[tagged]) == WORD_START)
        ):  # SentencePiece reads "<2en> text" as "▁", "<2en>", "▁text"
            x = [*x[:tagged], *x[tagged + 1 :]]
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
        elif not tagged and lead == 0 and len(set(tags.values())) > 1:
            choices = ", ".join(sorted(set(tags.values())))
            raise InputError(
                f"input line {number}: the model translates into {choices}; choose one with "
                f"--tgt-lang (tgt_lang in the server), or start the line with its tag"
            )
        out.append(x)
    return out
