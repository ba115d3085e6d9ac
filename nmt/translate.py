"""Lines in, translations out: tokenize, batch by length, search, detokenize, keep order.

``Translator.load(DIR).translate(lines)`` is what ``nmt translate`` calls and what a Python
user calls. Input is read ahead by a background thread and translated in chunks of what has
arrived (at most ``chunk_lines``), so a file of any size translates in bounded memory and a
line typed interactively comes back without waiting for the end of the input.

On CPU, the batches of a chunk are searched by several worker threads at once, each running
torch single-threaded (:func:`cpu_workers`): for models of this size, parallel batches beat
parallel matrix products (measured in docs/benchmarks.md), as CTranslate2's ``inter_threads``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nmt.checkpoint import load_model
from nmt.config import DecodeConfig
from nmt.data import pad
from nmt.device import resolve_device
from nmt.errors import ConfigError, InputError
from nmt.marian_vocab import load_tokenizer
from nmt.model import Transformer
from nmt.onednn import use_onednn
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.tokenizer import Tokenizer


@dataclass(frozen=True)
class Translation:
    """The result for one input line.

    Attributes:
        text: the best translation (empty for an empty input line).
        score: its log-probability (natural log, EOS included); 0 for an empty line.
        nbest: ``(text, score)`` of the best hypotheses, best first (``DecodeConfig.nbest``).
        truncated: the source was longer than the model allows and was cut.
    """

    text: str
    score: float
    nbest: list[tuple[str, float]] = field(default_factory=list)
    truncated: bool = False


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def for_inference(
    model: Transformer, dtype: str = "fp32", quantize: str | None = None, onednn: bool = True
) -> Transformer:
    """The model in eval mode, cast to ``dtype`` or with int8 linear layers.

    ``bf16`` halves the cost of the matrix products on GPUs (on our AVX512-BF16 CPU it was no
    faster than float32 through oneDNN, docs/benchmarks.md); ``fp16`` is for GPUs only;
    ``quantize="int8"`` replaces the linear layers by dynamically quantized ones (CPU; Jacob
    et al. 2018). Scores stay float32 either way (``decode_step`` returns float32
    log-probabilities). On CPU, a float32 model computes its linear layers and output
    projection with oneDNN (:mod:`nmt.onednn`), an int8 model its (float32) output
    projection, unless ``onednn=False``.

    Raises:
        ConfigError: an unknown dtype or quantization, fp16 on CPU, or int8 on a GPU.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    device = next(model.parameters()).device
    if dtype == "fp16" and device.type == "cpu":
        raise ConfigError("dtype=fp16 is for GPUs; on CPU use bf16 or --quantize int8")
    model = model.eval().to(DTYPES[dtype])
    if quantize is None:
        if onednn and device.type == "cpu" and dtype == "fp32":
            use_onednn(model)
        return model
    if quantize != "int8":
        raise ConfigError(f"quantize={quantize!r}: the only choice is int8")
    if device.type != "cpu" or dtype != "fp32":
        raise ConfigError("--quantize int8 is for CPU and float32 weights; drop --dtype")
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return use_onednn(model, layers=False) if onednn else model


def cpu_workers(workers: int = 0) -> tuple[int, int]:
    """``(workers, threads)`` for searching on CPU: ``workers`` batches at once, each running
    torch ops on ``threads`` threads, sharing the ``torch.get_num_threads()`` threads this
    process may use (``OMP_NUM_THREADS`` applies).

    ``workers=0`` picks one single-threaded worker per thread, the fastest for throughput;
    ``workers=1`` searches one batch at a time on all threads, the lowest latency for a single
    line.

    Raises:
        ConfigError: negative ``workers``.
    """
    if workers < 0:
        raise ConfigError(f"workers={workers} must be 0 (one per CPU thread) or more")
    total = torch.get_num_threads()
    workers = workers or total
    return workers, max(1, total // workers)


def worker_pool(workers: int, threads: int) -> ThreadPoolExecutor:
    """``workers`` threads whose torch ops each run on ``threads`` intra-op threads.

    torch keeps a thread count per thread once that thread has used it, but
    ``torch.set_num_threads`` also sets the count that threads started later begin with: each
    worker fixes its own count first, and the caller's setting is put back once all have.
    """
    before = torch.get_num_threads()
    started = threading.Barrier(workers + 1)

    def init() -> None:
        torch.get_num_threads()  # this thread's own count exists from here on
        torch.set_num_threads(threads)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="nmt-search", initializer=init)
    try:
        for _ in range(workers):  # each task holds its thread, so every thread gets started
            pool.submit(started.wait, 60)
        started.wait(60)  # raises BrokenBarrierError rather than hang if a thread fails
    finally:
        torch.set_num_threads(before)
    return pool


def length_batches(lengths: list[int], batch_tokens: int, batch_size: int) -> list[list[int]]:
    """Indices sorted by length and cut into batches of at most ``batch_size`` sentences and
    ``batch_tokens`` padded tokens (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= batch_size or (len(current) + 1) * width > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


_END = object()


def available_chunks(lines: Iterable[str], max_lines: int) -> Iterator[list[str]]:
    """Group ``lines`` into chunks of at most ``max_lines`` without waiting for input that
    has not arrived: a background thread reads ahead (at most ``2 * max_lines`` lines), and a
    chunk ends when it is full or when nothing more is available right now.

    An exception raised while reading (e.g. a non-UTF-8 line) is raised here after the lines
    before it have been yielded.
    """
    pending: queue.Queue[object] = queue.Queue(maxsize=2 * max_lines)

    def read() -> None:
        try:
            for line in lines:
                pending.put(line)
        except BaseException as exc:  # handed to the consumer
            pending.put(exc)
        pending.put(_END)

    threading.Thread(target=read, daemon=True).start()
    while True:
        chunk: list[str] = []
        item = pending.get()
        while isinstance(item, str):
            chunk.append(item)
            if len(chunk) >= max_lines:
                break
            try:
                item = pending.get_nowait()
            except queue.Empty:
                break
        if chunk:
            yield chunk
        if isinstance(item, BaseException):
            raise item
        if item is _END:
            return


class BaseTranslator:
    """What every engine shares: streaming, tokenization, truncation, empty lines, order.

    Subclasses implement :meth:`search_rows`.

    Args:
        tokenizer: the model's SentencePiece model; decode: search settings.
        chunk_lines: input lines translated together at most (bounds memory).
        max_positions: the model's position limit; sources are cut to one less (EOS).
        strict: raise :class:`InputError` for a source longer than that instead of cutting.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None,
        chunk_lines: int,
        max_positions: int,
        strict: bool = False,
    ):
        self.tokenizer = tokenizer
        self.decode = decode or DecodeConfig()
        self.chunk_lines = chunk_lines
        self.max_src_tokens = max_positions - 1  # room for EOS
        self.strict = strict

    def translate(self, lines: Iterable[str]) -> Iterator[Translation]:
        """Translate ``lines`` (without newlines), yielding one result per line, in order.

        Raises:
            InputError: with ``strict``, a line longer than the model allows (line number
                counted from 1 over all of ``lines``).
        """
        first = 1
        for chunk in available_chunks(lines, self.chunk_lines):
            yield from self.translate_chunk(chunk, first)
            first += len(chunk)

    def translate_chunk(self, lines: list[str], first_line: int = 1) -> list[Translation]:
        """Translate a list of lines held in memory (``first_line``: number of ``lines[0]``)."""
        ids = self.tokenizer.encode(lines)
        truncated = [len(x) > self.max_src_tokens for x in ids]
        if self.strict and any(truncated):
            i = truncated.index(True)
            raise InputError(
                f"input line {first_line + i} has {len(ids[i])} tokens, the model takes at most "
                f"{self.max_src_tokens}; shorten it, or drop --strict to cut it with a warning"
            )
        ids = [x[: self.max_src_tokens] for x in ids]
        empty = Translation("", 0.0, [("", 0.0)] * self.decode.nbest)
        results: list[Translation] = [empty] * len(lines)
        for rows, hyps_of_rows in self.search_rows(ids):
            for row, hyps in zip(rows, hyps_of_rows):
                texts = self.tokenizer.decode([h.tokens for h in hyps])
                nbest = [(t, h.score) for t, h in zip(texts, hyps)]
                results[row] = Translation(texts[0], hyps[0].score, nbest, truncated[row])
        return results

    def search_rows(
        self, ids: list[list[int]]
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Search the non-empty sources of ``ids`` in batches; yields ``(rows, nbest lists)``."""
        raise NotImplementedError

    def row_batches(self, ids: list[list[int]], rows: list[int]) -> list[list[int]]:
        """``rows`` of ``ids`` (source ids without EOS) cut into :func:`length_batches` by the
        decode settings' ``batch_tokens`` and ``batch_size`` (EOS counted); each batch is a
        list of rows."""
        lengths = [len(ids[r]) + 1 for r in rows]
        d = self.decode
        return [
            [rows[b] for b in batch]
            for batch in length_batches(lengths, d.batch_tokens, d.batch_size)
        ]


class Translator(BaseTranslator):
    """A loaded model, its tokenizer and search settings.

    Args:
        model: the Transformer (put in eval mode here).
        tokenizer: the joint SentencePiece model it was trained with.
        decode: search settings.
        chunk_lines: input lines read and translated together (bounds memory).
        workers: on CPU, batches searched at once by worker threads (:func:`cpu_workers`;
            0 = one single-threaded worker per CPU thread); 1 searches in the calling
            thread. GPUs always search one batch at a time.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None = None,
        chunk_lines: int = 2000,
        strict: bool = False,
        workers: int = 1,
    ):
        super().__init__(tokenizer, decode, chunk_lines, model.cfg.max_positions, strict)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.workers, self.worker_threads = (
            cpu_workers(workers) if self.device.type == "cpu" else (1, 0)
        )
        self.pool: ThreadPoolExecutor | None = None

    @classmethod
    def load(
        cls,
        folder: str | Path,
        decode: DecodeConfig | None = None,
        device: str | torch.device = "auto",
        weights: str | Path | None = None,
        chunk_lines: int = 2000,
        strict: bool = False,
        dtype: str = "fp32",
        quantize: str | None = None,
        workers: int = 0,
        onednn: bool = True,
    ) -> Translator:
        """Load a model folder (config.json, spm.model, model.safetensors).

        Args:
            dtype / quantize / onednn: see :func:`for_inference` (default: float32, through
                oneDNN on CPU).
            workers: see :class:`Translator` (default: one per CPU thread).

        Raises:
            CheckpointError: a file is missing or of another format version.
            ConfigError: an invalid dtype/quantize combination, or negative ``workers``.
        """
        model, _ = load_model(folder, weights=weights, device=resolve_device(device))
        model = for_inference(model, dtype, quantize, onednn)
        tokenizer = load_tokenizer(folder)
        return cls(model, tokenizer, decode, chunk_lines, strict, workers)

    def search_rows(
        self, ids: list[list[int]]
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Batches of similar length (EOS counted), longest first, searched on the device (by
        the worker threads when there are several), yielded in that order."""
        batches = self.row_batches(ids, [i for i, x in enumerate(ids) if x])

        def run(rows: list[int]) -> tuple[list[int], list[list[Hypothesis]]]:
            cfg = self.model.cfg
            src = pad([ids[r] for r in rows], suffix=cfg.eos_id, pad_id=cfg.pad_id)
            src = src.to(self.device)
            return rows, self.search(src)

        if self.workers == 1 or len(batches) == 1:
            yield from map(run, batches)
            return
        if self.pool is None:
            self.pool = worker_pool(self.workers, self.worker_threads)
        yield from self.pool.map(run, batches)

    def search(self, src: torch.Tensor) -> list[list[Hypothesis]]:
        """Run the configured search on ``(batch, src_len)`` ids; nbest lists per sentence."""
        d = self.decode
        if d.beam_size == 1:
            return [[h] for h in greedy_search(self.model, src, d.max_len_a, d.max_len_b)]
        return beam_search(
            self.model, src, d.beam_size, d.length_penalty, d.max_len_a, d.max_len_b, d.nbest
        )
