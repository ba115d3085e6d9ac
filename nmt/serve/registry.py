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
import threading
from collections.abc import Hashable, Iterator
from concurrent.futures import CancelledError, Executor, Future
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
from nmt.model.transformer import Transformer
from nmt.serve.batcher import Batcher
from nmt.serve.config import DecodeOptions
from nmt.serve.work import (
    SPLIT_LINES,
    Work,
    check_attention_size,
    joined,
    split_work,
    work_tokens,
)

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
    dropped_lines: int = 0  # lines left out of a running batch: their request had timed out
    _per_options: dict[Hashable, BaseTranslator] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
            QueueFullError: the queue cannot take these lines (``--max-queue``).
        """
        assert self.batcher is not None, "start_batchers() first"
        n_parts = min(self.batcher.workers, len(work.ids) // SPLIT_LINES)
        if n_parts < 2:
            return self.batcher.submit(options, work, work_tokens(work), len(work.ids))
        parts = split_work(work, n_parts)
        jobs = [(p, work_tokens(p), len(p.ids)) for p in parts]
        return joined(self.batcher.submit_many(options, jobs))

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

    def run(self, options: Hashable, works: list[Work]) -> list[Any]:
        """Search the lines of several requests as one batch (on a worker thread): one list
        of :class:`LineResult` per work, or the exception that fails that work alone
        (:class:`~nmt.serve.work.AttentionTooLargeError`, ``CancelledError`` for a work whose
        request timed out).

        The lines of a work cancelled meanwhile (:attr:`Work.cancelled`) are left out of the
        search where the engine allows (:meth:`search_live`), and its attention is not
        computed. The attention's size is checked from the hypotheses' lengths before it is
        computed.
        """
        assert isinstance(options, DecodeOptions)
        translator = self.translator_for(options)
        owner = [w for w in works for _ in w.ids]
        ids = [x for w in works for x in w.ids]
        prefixes = None
        if any(w.prefixes is not None for w in works):
            prefixes = [p for w in works for p in (w.prefixes or [[] for _ in w.ids])]
        seeds = [x for w in works for x in (w.seeds or [])] if options.sampling else None
        request = Request(translator.decode, prefixes, seeds)
        found: list[list[Hypothesis]] = [[] for _ in ids]
        for rows, hyps in self.search_live(translator, ids, request, owner):
            for row, h in zip(rows, hyps, strict=True):
                found[row] = [] if h[0].failure else h  # no output: answered as an empty line
        spans, start = [], 0
        for w in works:
            spans.append((start, start + len(w.ids)))
            start += len(w.ids)
        failures = [self.work_failure(w, found[a:b]) for w, (a, b) in zip(works, spans)]
        asked = [w.attention and f is None for w, f in zip(works, failures)]
        attention = self.attention(works, found, asked)
        results: list[Any] = []
        for w, (a, b), failure in zip(works, spans, failures):
            if failure is not None:
                results.append(failure)
                continue
            lines = zip(w.ids, w.truncated, found[a:b], attention[a:b])
            results.append([self.line_result(*line) for line in lines])
        return results

    def work_failure(self, w: Work, found: list[list[Hypothesis]]) -> Exception | None:
        """What fails ``w`` alone: ``CancelledError`` once its request timed out, or the
        attention it asks for being too large (checked from the outputs' lengths, before any
        attention is computed); ``None`` otherwise."""
        if w.cancelled.is_set():
            return CancelledError()
        if w.max_attention is not None:
            try:
                check_attention_size(self.attention_values(w.ids, found), w.max_attention)
            except Exception as exc:
                return exc
        return None

    def attention(
        self, works: list[Work], found: list[list[Hypothesis]], asked: list[bool]
    ) -> list[list[Attention] | None]:
        """The cross-attention of every hypothesis of the lines of the works that ask for it
        (``asked``, one flag per work; ``None`` for the other lines), in one batched pass over
        the batch's outputs (:meth:`nmt.decode.engine.BaseTranslator.cross_attention`)."""
        wanted = [a for w, a in zip(works, asked) for _ in w.ids]
        ids = [x for w in works for x in w.ids]
        pairs = [(r, h.tokens) for r, hyps in enumerate(found) if wanted[r] for h in hyps]
        if not pairs:
            return [None for _ in found]
        weights = iter(
            self.translator.cross_attention([ids[r] for r, _ in pairs], [t for _, t in pairs])
        )
        return [
            [Attention.of(next(weights)) for _ in hyps] if wanted[r] else None
            for r, hyps in enumerate(found)
        ]

    def attention_values(self, ids: list[list[int]], found: list[list[Hypothesis]]) -> int:
        """How many weights the attention of these hypotheses holds: layers × heads × (target
        + EOS) × (source + EOS) each, as :func:`cross_attention` returns them."""
        model = self.translator.model if isinstance(self.translator, Translator) else None
        if not isinstance(model, Transformer):
            return 0
        per_pair = model.cfg.n_decoder_layers * model.cfg.n_heads
        return sum(
            per_pair * (len(h.tokens) + 1) * (len(src) + 1)
            for src, hyps in zip(ids, found)
            for h in hyps
        )

    def search_live(
        self, translator: BaseTranslator, ids: list[list[int]], request: Request, owner: list[Work]
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """``translator.search_rows`` over the rows whose work (``owner[row]``) is not
        cancelled; yields ``(rows, hypotheses)`` with rows indexing ``ids``.

        The torch engine, loaded with one worker, searches its length batches one at a time
        on this thread: before each, the rows of works cancelled meanwhile are left out (the
        engine is asked again for the rows still wanted, and only its next batch is run; the
        batches stay those it would have made, longest first). CTranslate2 queues all its
        batches at once, so its rows are chosen once, before the search.
        """
        one_at_a_time = isinstance(translator, Translator) and translator.workers == 1
        wanted = [r for r, x in enumerate(ids) if x]  # empty lines are not searched
        while wanted:
            live = [r for r in wanted if not owner[r].cancelled.is_set()]
            self.count_dropped(len(wanted) - len(live))
            if not live:
                return
            sub = Request(
                request.decode,
                None if request.prefixes is None else [request.prefixes[r] for r in live],
                None if request.seeds is None else [request.seeds[r] for r in live],
            )
            batches = translator.search_rows([ids[r] for r in live], sub)
            searched: set[int] = set()
            for rows, hyps in batches:
                searched.update(live[r] for r in rows)
                yield [live[r] for r in rows], hyps
                if one_at_a_time:
                    break
            getattr(batches, "close", lambda: None)()  # the generator's next batch is not run
            if not one_at_a_time or not searched:
                return
            wanted = [r for r in live if r not in searched]

    def count_dropped(self, lines: int) -> None:
        if lines:
            with self._lock:
                self.dropped_lines += lines

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
    model_id: str, folder: Path, engine: str, device: str, batch_tokens: int, workers: int = 0
) -> ServedModel:
    """Load one model folder (torch or CTranslate2) for serving; a multilingual model
    serves all its pairs, each request choosing its target language, and an imported
    multi-target Marian model its ``>>lang<<`` tags besides its plain input.

    ``workers`` is the server's (``nmt serve --workers``, 0 = one per CPU thread): a
    CTranslate2 model runs that many batches at once (its ``inter_threads``), one per worker
    thread of :func:`start_batchers`, instead of one at a time; the torch engine searches on
    the server's worker threads themselves (loaded with one worker).

    Raises:
        ConfigError / CheckpointError / MissingDependencyError: as
            :func:`nmt.decode.loading.load_translator`.
    """
    decode = DecodeConfig(batch_tokens=batch_tokens)
    exported = engine != "torch" and is_ctranslate2_dir(folder)
    info = read_export_info(folder) if is_ctranslate2_dir(folder) else read_config(folder)
    pairs = list(info.get("pairs") or [])  # an export given to torch: load_translator says so
    langs = target_langs(pairs)
    first = langs[0] if len(langs) > 1 else None  # each request chooses (tokenizers)
    translator = load_translator(
        folder, decode, engine, device, workers=workers if exported else 1, tgt_lang=first
    )
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
    specs: list[str],
    engine: str = "auto",
    device: str = "auto",
    batch_tokens: int = 4096,
    workers: int = 0,
) -> dict[str, ServedModel]:
    """Load every ``-m`` spec (:func:`parse_model_specs`), by id, in the order given, for a
    server of ``workers`` worker threads (:func:`load_model_entry`).

    Raises:
        ConfigError: bad specs; CheckpointError: a folder that is not a model folder.
    """
    models = {}
    for model_id, folder in parse_model_specs(specs):
        if not folder.is_dir():
            raise ConfigError(f"-m {folder}: not a folder")
        models[model_id] = load_model_entry(model_id, folder, engine, device, batch_tokens, workers)
    return models


def start_batchers(
    models: dict[str, ServedModel],
    workers: int,
    batch_tokens: int,
    max_wait_ms: float,
    max_queue: int | None = None,
) -> Executor:
    """Give each model a :class:`Batcher` over one worker pool shared by all models.

    Args:
        workers: translation worker threads, as ``nmt translate --workers`` (0 = one
            single-threaded worker per CPU thread; on a GPU: 1).
        max_queue: lines each model's queue holds at most (``None``: no limit).

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
        m.batcher = Batcher(m.run, pool, n, batch_tokens, max_wait_ms, max_queue)
    return pool
