"""The models a server holds, each under its id, with its translator and dynamic batcher.

``nmt serve -m DIR`` serves one model under the folder's name; ``-m ID=DIR`` (repeatable)
serves several side by side. (In ``nmt translate`` a repeated ``-m`` means an ensemble; the
``ID=`` form keeps the two apart.) Each model's requests go through its own
:class:`~nmt.serve.batcher.Batcher`, keyed by the decoding options, so that only requests asking for
the same search share a batch; the batches run on worker threads shared by all models, as
``nmt translate --workers`` runs them (:func:`nmt.decode.translate.cpu_workers`). A request's
lines are encoded, searched and turned into results by the engine's own functions
(:class:`nmt.decode.engine.BaseTranslator`), as ``nmt translate``'s are.

This module is torch-side and HTTP-free; :mod:`nmt.serve.app` turns its results into JSON. The
server's limits and a request's decoding options are in :mod:`nmt.serve.config`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Hashable
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmt.config import DecodeConfig
from nmt.decode.ct2 import CT2Translator
from nmt.decode.ct2_folder import CT2_WEIGHTS, is_ctranslate2_dir, read_export_info
from nmt.decode.loading import load_translator
from nmt.decode.results import Encoded, Translation
from nmt.decode.search import Hypothesis
from nmt.decode.translate import BaseTranslator, Translator, cpu_workers, worker_pool
from nmt.errors import ConfigError
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


@dataclass
class ServedModel:
    """A loaded model under its id.

    Attributes:
        id: the name clients use; folder: the model folder.
        engine: ``torch`` or ``ctranslate2``; src_lang / tgt_lang: language codes (a
            multilingual model's are comma-separated lists).
        shape: the model's size (``d_model``, ``n_heads``, layers, ``vocab_size``...).
        sha256: hex digest of the weights file.
        translator: the loaded engine; every request is encoded, searched and turned into
            :class:`~nmt.decode.results.Translation` objects by it, with its own options.
        pairs: the directions it translates, ``(src, tgt)``
            (:attr:`nmt.data.targets.Targets.directions`).
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
    batcher: Batcher | None = None
    dropped_lines: int = 0  # lines left out of a running batch: their request had timed out
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decode_config(
        self, options: DecodeOptions, seed: int | None = None, prefixes: bool = False
    ) -> DecodeConfig:
        """The engine's settings searched with a request's ``options`` (and sampling
        ``seed``; ``prefixes``: it forces target prefixes), validated by the engine
        (:meth:`~nmt.decode.engine.BaseTranslator.options`, the one check of every caller);
        sampling without a seed gets a fresh one.

        Raises:
            ConfigError: settings the engine or model cannot apply, naming them.
        """
        return self.translator.options(options.config(self.translator.decode, seed), prefixes)

    def encode(
        self,
        lines: list[str],
        d: DecodeConfig,
        prefixes: list[str] | None = None,
        tgt_lang: str | None = None,
        attention: bool = False,
    ) -> Work:
        """A request's lines as the batcher takes them, encoded by the engine's one function
        (:meth:`nmt.decode.engine.BaseTranslator.encode`: tags, cut, empty lines, prefixes,
        per-line seeds from ``d.seed``, as ``nmt translate --seed`` gives them).
        ``attention``: the results carry each output's cross-attention.

        Raises:
            ConfigError / InputError: see the engine's ``encode`` (a target language the
                model lacks, a line without the tag the model needs, a prefix too long).
        """
        enc = self.translator.encode(lines, d, 1, prefixes, tgt_lang)
        return Work(enc.ids, enc.truncated, attention, enc.prefixes, enc.seeds)

    def submit(self, work: Work, options: DecodeOptions) -> Future[list[Translation]]:
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

    def run(self, options: Hashable, works: list[Work]) -> list[Any]:
        """Search the lines of several requests as one batch (on a worker thread), through
        the engine (:meth:`~nmt.decode.engine.BaseTranslator.search_encoded` and
        :meth:`~nmt.decode.engine.BaseTranslator.results`): one list of
        :class:`~nmt.decode.results.Translation` per work, or the exception that fails that
        work alone (:class:`~nmt.serve.work.AttentionTooLargeError`, ``CancelledError`` for
        a work whose request timed out).

        The lines of a work cancelled meanwhile (:attr:`Work.cancelled`) are left out of the
        search where the engine allows, and its attention is not computed. The attention's
        size is checked from the hypotheses' lengths before it is computed.
        """
        assert isinstance(options, DecodeOptions)
        d = options.config(self.translator.decode)  # validated when the request came in
        owner = [w for w in works for _ in w.ids]
        prefixes = None
        if any(w.prefixes is not None for w in works):
            prefixes = [p for w in works for p in (w.prefixes or [[] for _ in w.ids])]
        seeds = [x for w in works for x in (w.seeds or [])] if options.sampling else None
        enc = Encoded([x for w in works for x in w.ids], [t for w in works for t in w.truncated],
                      prefixes, seeds)  # fmt: skip
        found = self.translator.search_encoded(enc, d, lambda r: not owner[r].cancelled.is_set())
        self.count_dropped(sum(1 for x, h in zip(enc.ids, found) if x and not h))
        spans, start = [], 0
        for w in works:
            spans.append((start, start + len(w.ids)))
            start += len(w.ids)
        failures = [self.work_failure(w, found[a:b]) for w, (a, b) in zip(works, spans)]
        asked = [w.attention and f is None for w, f in zip(works, failures)]
        translations = self.translator.results(
            enc, found, d, attention=[a for w, a in zip(works, asked) for _ in w.ids]
        )
        return [
            failure if failure is not None else translations[a:b]
            for failure, (a, b) in zip(failures, spans)
        ]

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

    def count_dropped(self, lines: int) -> None:
        if lines:
            with self._lock:
                self.dropped_lines += lines


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
    model_id: str,
    folder: Path,
    engine: str,
    device: str,
    batch_tokens: int,
    workers: int = 0,
    shortlist: bool = False,
) -> ServedModel:
    """Load one model folder (torch or CTranslate2) for serving; a multilingual model
    serves all its pairs, and an imported multi-target Marian model its ``>>lang<<`` tags'
    languages, each request choosing its target language
    (:class:`nmt.data.targets.Targets`).

    ``workers`` is the server's (``nmt serve --workers``, 0 = one per CPU thread): a
    CTranslate2 model runs that many batches at once (its ``inter_threads``), one per worker
    thread of :func:`start_batchers`, instead of one at a time; the torch engine searches on
    the server's worker threads themselves (loaded with one worker).

    ``shortlist``: every request searches over the folder's vocabulary shortlist (a
    CTranslate2 folder: its vocabulary map), as ``nmt translate --shortlist``; the settings
    are the engine's (:meth:`~nmt.decode.engine.BaseTranslator.options`), which refuse what
    a shortlist cannot apply to (sampling) for every request as for the command line.

    Raises:
        ConfigError / CheckpointError / MissingDependencyError: as
            :func:`nmt.decode.loading.load_translator`; with ``shortlist``, a folder without
            a shortlist (or a CTranslate2 one without its vocabulary map).
    """
    decode = DecodeConfig(batch_tokens=batch_tokens, shortlist=shortlist)
    exported = engine != "torch" and is_ctranslate2_dir(folder)
    translator = load_translator(folder, decode, engine, device, workers=workers if exported else 1)
    translator.options(decode)  # a shortlist asked for is there (loaded now, not at a request)
    if isinstance(translator, CT2Translator):
        info, weights, name = read_export_info(folder), folder / CT2_WEIGHTS, "ctranslate2"
    else:
        info, weights, name = read_config(folder), folder / WEIGHTS_FILE, "torch"
    shape = {k: info["model"][k] for k in SHAPE_KEYS if k in info["model"]}
    directions = translator.targets.directions
    src_lang, tgt_lang = (",".join(dict.fromkeys(d[i] for d in directions)) for i in (0, 1))
    return ServedModel(
        model_id, folder, name, src_lang, tgt_lang, shape, file_sha256(weights), translator,
        directions,
    )  # fmt: skip


def load_models(
    specs: list[str],
    engine: str = "auto",
    device: str = "auto",
    batch_tokens: int = 4096,
    workers: int = 0,
    shortlist: bool = False,
) -> dict[str, ServedModel]:
    """Load every ``-m`` spec (:func:`parse_model_specs`), by id, in the order given, for a
    server of ``workers`` worker threads, each searching over its shortlist with
    ``shortlist`` (:func:`load_model_entry`).

    Raises:
        ConfigError: bad specs; CheckpointError: a folder that is not a model folder.
    """
    models = {}
    for model_id, folder in parse_model_specs(specs):
        if not folder.is_dir():
            raise ConfigError(f"-m {folder}: not a folder")
        models[model_id] = load_model_entry(
            model_id, folder, engine, device, batch_tokens, workers, shortlist
        )
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
