"""The models a server holds, each under its id, with its translator and dynamic batcher.

``nmt serve -m DIR`` serves one model under the folder's name; ``-m ID=DIR`` (repeatable)
serves several side by side. (In ``nmt translate`` a repeated ``-m`` means an ensemble; the
``ID=`` form keeps the two apart.) Each model's requests go through its own
:class:`~nmt.serve.batcher.Batcher`, keyed by the decoding options, so that only requests asking for
the same search share a batch; the batches run on worker threads shared by all models, as
``nmt translate --workers`` runs them (:func:`nmt.decode.translate.cpu_workers`).

This module is torch-side and HTTP-free; :mod:`nmt.serve.app` turns its results into JSON. The
server's limits and a request's decoding options are in :mod:`nmt.serve.config`.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Hashable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmt.config import DecodeConfig
from nmt.data.multilingual import (
    TaggedTokenizer,
    for_target,
    marian_target_langs,
    split_pair,
    target_langs,
)
from nmt.data.tokenizer import Tokenizer
from nmt.decode.attention import Attention
from nmt.decode.ct2 import CT2Translator
from nmt.decode.ct2_folder import CT2_WEIGHTS, is_ctranslate2_dir, read_export_info
from nmt.decode.engine import Request
from nmt.decode.loading import load_translator
from nmt.decode.sampling import fresh_seed, sentence_seed
from nmt.decode.search import Hypothesis
from nmt.decode.translate import BaseTranslator, Translator, cpu_workers, worker_pool
from nmt.errors import ConfigError, InputError
from nmt.model.checkpoint import WEIGHTS_FILE, read_config
from nmt.serve.batcher import Batcher
from nmt.serve.config import DecodeOptions
from nmt.serve.work import SPLIT_LINES, Work, joined, split_work, work_tokens

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHAPE_KEYS = ("d_model", "n_heads", "ffn_dim", "n_encoder_layers", "n_decoder_layers", "vocab_size")


@dataclass(frozen=True)
class Hyp:
    """One output hypothesis: detokenized ``text``, ``score`` (log-probability, natural log,
    EOS included), its target ``pieces`` and, when asked for, its :class:`Attention`."""

    text: str
    score: float
    pieces: list[str]
    attention: Attention | None = None


@dataclass(frozen=True)
class LineResult:
    """The result for one source line: its ``src_pieces`` (as searched, after any cut),
    the hypotheses best first (one unless ``nbest`` > 1; none for an empty line), and
    whether the line was cut to the model's length limit."""

    src_pieces: list[str]
    hyps: list[Hyp]
    truncated: bool


@dataclass
class ServedModel:
    """A loaded model under its id.

    Attributes:
        id: the name clients use; folder: the model folder.
        engine: ``torch`` or ``ctranslate2``; src_lang / tgt_lang: language codes (a
            multilingual model's are comma-separated lists).
        shape: the model's size (``d_model``, ``n_heads``, layers, ``vocab_size``...).
        sha256: hex digest of the weights file.
        translator: the loaded translator (its own decode settings unused).
        pairs: the directions it translates, ``(src, tgt)``.
        tokenizers: the source tokenizer of each target language (a multilingual model's
            tag it with ``<2tgt>``, :mod:`nmt.data.multilingual`); every request chooses one.
        default_tgt: the target language of a request that names none: the model's only
            one, or a Marian import's own (its plain input); ``None`` when it has several.
    """

    id: str
    folder: Path
    engine: str
    src_lang: str
    tgt_lang: str
    shape: dict[str, Any]
    sha256: str
    translator: BaseTranslator
    pairs: list[tuple[str, str]] = field(default_factory=list)
    tokenizers: dict[str, Tokenizer] = field(default_factory=dict)
    default_tgt: str | None = None
    batcher: Batcher | None = None
    _per_options: dict[Hashable, BaseTranslator] = field(default_factory=dict)

    def tokenizer_for(self, tgt_lang: str | None) -> Tokenizer:
        """The source tokenizer that translates into ``tgt_lang``, or into ``default_tgt``
        when none is named.

        Raises:
            ConfigError: no ``tgt_lang`` for a model of several target languages, or one not
                of the model's (the message names the field and the choices).
        """
        lang = tgt_lang or self.default_tgt
        choices = ", ".join(self.tokenizers)
        if lang is None:
            raise ConfigError(
                f"tgt_lang: model {self.id!r} translates into {choices}; choose one with tgt_lang"
            )
        if lang not in self.tokenizers:
            raise ConfigError(
                f"tgt_lang: model {self.id!r} translates into {choices}, not {lang!r}"
            )
        return self.tokenizers[lang]

    def encode(
        self,
        lines: list[str],
        prefixes: list[str] | None = None,
        seed: int | None = None,
        sampling: bool = False,
        tgt_lang: str | None = None,
        attention: bool = False,
    ) -> Work:
        """Tokenize ``lines`` for ``tgt_lang`` (:meth:`tokenizer_for`) and their target
        ``prefixes`` (``""`` = none); sources longer than the model allows are cut (and
        marked). When ``sampling``, each line gets its own seed from ``seed`` (a fresh one
        when ``None``) and its 1-based line number, as ``nmt translate --seed`` gives it.
        ``attention``: the results carry each output's cross-attention.

        Raises:
            ConfigError: see :meth:`tokenizer_for`.
            InputError: a prefix longer than the model can output (names ``prefix[i]``).
        """
        tokenizer = self.tokenizer_for(tgt_lang)
        ids = tokenizer.encode(lines)
        limit = self.translator.max_src_tokens
        prefix_ids = None
        if prefixes is not None:
            prefix_ids = [tokenizer.encode_target([p])[0] if p else [] for p in prefixes]
            for i, x in enumerate(prefix_ids):
                if len(x) > limit:  # the search could not force it (nmt translate refuses it too)
                    raise InputError(
                        f"prefix[{i}]: {len(x)} tokens; the model outputs at most {limit}; "
                        "shorten it"
                    )
        seeds = None
        if sampling:
            base = fresh_seed() if seed is None else seed
            seeds = [sentence_seed(base, line) for line in range(1, len(lines) + 1)]
        return Work(
            [x[:limit] for x in ids], [len(x) > limit for x in ids], attention, prefix_ids, seeds
        )

    def submit(self, work: Work, options: DecodeOptions) -> Future[list[LineResult]]:
        """Queue ``work`` for the dynamic batcher; the future gets one result per line.

        A request of at least :data:`SPLIT_LINES` lines per worker is queued as one part per
        worker (consecutive lines), so that a lone long request keeps every worker busy as a
        file does, instead of running as one batch on one single-threaded worker.

        Raises:
            BatcherClosedError: the server is shutting down.
        """
        assert self.batcher is not None, "start_batchers() first"
        n_parts = min(self.batcher.workers, len(work.ids) // SPLIT_LINES)
        if n_parts < 2:
            return self.batcher.submit(options, work, work_tokens(work))
        parts = split_work(work, n_parts)
        futures = self.batcher.submit_many(options, [(p, work_tokens(p)) for p in parts])
        return joined(futures)

    def translator_for(self, options: DecodeOptions) -> BaseTranslator:
        """A translator sharing the loaded model but searching with ``options``.

        Raises:
            ConfigError: invalid options (e.g. ``nbest`` above ``beam_size``), naming them.
        """
        if options not in self._per_options:
            decode = DecodeConfig(
                beam_size=options.beam_size,
                nbest=options.nbest,
                length_penalty=options.length_penalty,
                sampling_topk=options.sampling_topk,
                sampling_topp=options.sampling_topp,
                sampling_temperature=options.sampling_temperature,
                batch_tokens=self.translator.decode.batch_tokens,
            )
            self.translator.check_options(decode, prefixes=False)
            translator = copy.copy(self.translator)
            translator.decode = decode
            self._per_options[options] = translator
        return self._per_options[options]

    def run(self, options: Hashable, works: list[Work]) -> list[list[LineResult]]:
        """Search the lines of several requests as one batch (on a worker thread)."""
        assert isinstance(options, DecodeOptions)
        translator = self.translator_for(options)
        ids = [x for w in works for x in w.ids]
        prefixes = None
        if any(w.prefixes is not None for w in works):
            prefixes = [p for w in works for p in (w.prefixes or [[] for _ in w.ids])]
        seeds = [x for w in works for x in (w.seeds or [])] if options.sampling else None
        request = Request(translator.decode, prefixes, seeds)
        found: list[list[Hypothesis]] = [[] for _ in ids]
        for rows, hyps in translator.search_rows(ids, request):
            for row, h in zip(rows, hyps, strict=True):
                found[row] = [] if h[0].failure else h  # no output: answered as an empty line
        attention = self.attention(works, found)
        results, start = [], 0
        for w in works:
            end = start + len(w.ids)
            lines = zip(w.ids, w.truncated, found[start:end], attention[start:end])
            results.append([self.line_result(*line) for line in lines])
            start = end
        return results

    def attention(
        self, works: list[Work], found: list[list[Hypothesis]]
    ) -> list[list[Attention] | None]:
        """The cross-attention of every hypothesis of the lines whose request asked for it
        (``None`` for the others), in one batched pass over the batch's outputs
        (:meth:`nmt.decode.engine.BaseTranslator.cross_attention`)."""
        asked = [w.attention for w in works for _ in w.ids]
        ids = [x for w in works for x in w.ids]
        pairs = [(r, h.tokens) for r, hyps in enumerate(found) if asked[r] for h in hyps]
        weights = iter(
            self.translator.cross_attention([ids[r] for r, _ in pairs], [t for _, t in pairs])
        )
        return [
            [Attention.of(next(weights)) for _ in hyps] if asked[r] else None
            for r, hyps in enumerate(found)
        ]

    def line_result(
        self,
        src_ids: list[int],
        truncated: bool,
        hyps: list[Hypothesis],
        attention: list[Attention] | None,
    ) -> LineResult:
        texts = self.translator.tokenizer.decode([h.tokens for h in hyps])
        out = [
            Hyp(text, h.score, self.pieces(h.tokens), None if attention is None else attention[i])
            for i, (text, h) in enumerate(zip(texts, hyps))
        ]
        return LineResult(self.pieces(src_ids, source=True), out, truncated)

    def pieces(self, ids: list[int], source: bool = False) -> list[str]:
        """SentencePiece pieces of target (or ``source``) ``ids`` followed by ``</s>`` (the
        attention's labels)."""
        tokenizer = self.translator.tokenizer
        piece = tokenizer.source_piece if source else tokenizer.piece
        return [piece(i) for i in [*ids, tokenizer.eos_id]]


def parse_model_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """``DIR`` or ``ID=DIR`` → ``(id, folder)``; a bare ``DIR`` is served under its name.

    Raises:
        ConfigError: no model, an invalid or repeated id.
    """
    if not specs:
        raise ConfigError("no model given: pass -m DIR or -m ID=DIR")
    out: list[tuple[str, Path]] = []
    for spec in specs:
        model_id, sep, folder = spec.partition("=")
        if not sep:
            path = Path(spec)
            model_id, folder = path.resolve().name, spec
        if not _MODEL_ID.match(model_id):
            raise ConfigError(
                f"-m {spec}: model id {model_id!r} must be letters, digits, '.', '_' or '-' "
                "(at most 64); write -m ID=DIR"
            )
        if model_id in {i for i, _ in out}:
            raise ConfigError(f"-m {spec}: model id {model_id!r} is given twice; use -m ID=DIR")
        out.append((model_id, Path(folder)))
    return out


def file_sha256(path: Path) -> str:
    """Hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_model_entry(
    model_id: str, folder: Path, engine: str, device: str, batch_tokens: int
) -> ServedModel:
    """Load one model folder (torch or CTranslate2) for serving; a multilingual model
    serves all its pairs, each request choosing its target language, and an imported
    multi-target Marian model its ``>>lang<<`` tags besides its plain input.

    Raises:
        ConfigError / CheckpointError / MissingDependencyError: as
            :func:`nmt.decode.loading.load_translator`.
    """
    decode = DecodeConfig(batch_tokens=batch_tokens)
    exported = engine != "torch" and is_ctranslate2_dir(folder)
    pairs = list((read_export_info(folder) if exported else read_config(folder)).get("pairs") or [])
    langs = target_langs(pairs)
    first = langs[0] if len(langs) > 1 else None  # each request chooses (tokenizers)
    translator = load_translator(folder, decode, engine, device, workers=1, tgt_lang=first)
    if isinstance(translator, CT2Translator):
        info, weights, name = read_export_info(folder), folder / CT2_WEIGHTS, "ctranslate2"
    else:
        info, weights, name = read_config(folder), folder / WEIGHTS_FILE, "torch"
    shape = {k: info["model"][k] for k in SHAPE_KEYS if k in info["model"]}
    src_lang, tgt_lang = str(info.get("src_lang")), str(info.get("tgt_lang"))
    tokenizer = translator.tokenizer
    directions, tokenizers = [(src_lang, tgt_lang)], {tgt_lang: tokenizer}
    default: str | None = tgt_lang
    if pairs:
        default = langs[0] if len(langs) == 1 else None
        base = tokenizer.base if isinstance(tokenizer, TaggedTokenizer) else tokenizer
        directions = [split_pair(p) for p in pairs]
        tokenizers = {lang: for_target(base, pairs, lang) for lang in langs}
    for lang in marian_target_langs(tokenizer):  # a multi-target Marian import
        if lang not in tokenizers:
            directions.append((src_lang, lang))
            tokenizers[lang] = for_target(tokenizer, [], lang)
    return ServedModel(
        model_id,
        folder,
        name,
        src_lang,
        tgt_lang,
        shape,
        file_sha256(weights),
        translator,
        directions,
        tokenizers,
        default,
    )


def load_models(
    specs: list[str], engine: str = "auto", device: str = "auto", batch_tokens: int = 4096
) -> dict[str, ServedModel]:
    """Load every ``-m`` spec (:func:`parse_model_specs`), by id, in the order given.

    Raises:
        ConfigError: bad specs; CheckpointError: a folder that is not a model folder.
    """
    models = {}
    for model_id, folder in parse_model_specs(specs):
        if not folder.is_dir():
            raise ConfigError(f"-m {folder}: not a folder")
        models[model_id] = load_model_entry(model_id, folder, engine, device, batch_tokens)
    return models


def start_batchers(
    models: dict[str, ServedModel], workers: int, batch_tokens: int, max_wait_ms: float
) -> Executor:
    """Give each model a :class:`Batcher` over one worker pool shared by all models.

    Args:
        workers: translation worker threads, as ``nmt translate --workers`` (0 = one
            single-threaded worker per CPU thread; on a GPU: 1).

    Returns:
        The pool (shut it down after closing the batchers).
    """
    on_gpu = any(
        isinstance(m.translator, Translator) and m.translator.device.type != "cpu"
        for m in models.values()
    )
    n, threads = (1, 1) if on_gpu else cpu_workers(workers)
    pool = worker_pool(n, threads)
    for m in models.values():
        m.batcher = Batcher(m.run, pool, n, batch_tokens, max_wait_ms)
    return pool
