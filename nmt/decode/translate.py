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

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

from nmt.config import DecodeConfig
from nmt.data.parallel import pad
from nmt.data.targets import Targets, for_target
from nmt.data.tokenizer import Tokenizer
from nmt.data.vocab import check_same_vocab, load_tokenizer
from nmt.decode.alignment import check_layer
from nmt.decode.attention import cross_attention
from nmt.decode.beam import beam_search
from nmt.decode.engine import BaseTranslator, Request, Translation
from nmt.decode.ensemble import Ensemble
from nmt.decode.forced import forced_scores
from nmt.decode.sampling import sample
from nmt.decode.search import Hypothesis, greedy_search, prefix_tensor
from nmt.decode.shortlist import Shortlist, load_shortlist
from nmt.decode.streaming import length_batches
from nmt.device import resolve_device
from nmt.errors import ConfigError
from nmt.model.checkpoint import load_model
from nmt.model.int8 import quantize_int8
from nmt.model.onednn import use_onednn
from nmt.model.transformer import Transformer

__all__ = ["BaseTranslator", "Translation", "Translator", "cpu_workers", "length_batches"]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def for_inference(
    model: Transformer, dtype: str = "fp32", quantize: str | None = None, onednn: bool = True
) -> Transformer:
    """The model in eval mode, cast to ``dtype`` or with int8 linear layers.

    ``bf16`` halves the cost of the matrix products on GPUs (on our AVX512-BF16 CPU it was no
    faster than float32 through oneDNN, docs/benchmarks.md); ``fp16`` is for GPUs only;
    ``quantize="int8"`` replaces the linear layers by int8 ones with dynamically quantized
    activations (CPU, oneDNN: :func:`nmt.model.int8.quantize_int8`). Scores stay float32
    either way (``decode_step`` returns float32 log-probabilities). On CPU, a float32 model
    computes its linear layers and output projection with oneDNN (:mod:`nmt.model.onednn`),
    an int8 model its (float32) output projection, unless ``onednn=False``.

    Raises:
        ConfigError: an unknown dtype or quantization, fp16 on CPU, or int8 on a GPU.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    device = next(model.parameters()).device
    if dtype == "fp16" and device.type == "cpu":
        raise ConfigError("dtype=fp16 is for GPUs; on CPU use bf16 or --quantization int8")
    model = model.eval().to(DTYPES[dtype])
    if quantize is None:
        if onednn and device.type == "cpu" and dtype == "fp32":
            use_onednn(model)
        return model
    if quantize != "int8":
        raise ConfigError(f"quantize={quantize!r}: the only choice is int8")
    if device.type != "cpu" or dtype != "fp32":
        raise ConfigError("--quantization int8 is for CPU and float32 weights; drop --dtype")
    model = quantize_int8(model)
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
        folder: the model folder, whose vocabulary shortlist ``DecodeConfig.shortlist``
            loads when first asked for (:mod:`nmt.decode.shortlist`; an ensemble uses its
            first model's).
    """

    def __init__(
        self,
        model: Transformer | Ensemble,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None = None,
        chunk_lines: int = 2000,
        strict: bool = False,
        workers: int = 1,
        targets: Targets | None = None,
        folder: str | Path | None = None,
    ):
        max_positions = model.cfg.max_positions
        super().__init__(tokenizer, decode, chunk_lines, max_positions, strict, targets)
        self.folder = None if folder is None else Path(folder)
        self.shortlist: Shortlist | None = None
        self.model = model if isinstance(model, Ensemble) else model.eval()
        first = model.models[0] if isinstance(model, Ensemble) else model
        self.device = next(first.parameters()).device
        self.workers, self.worker_threads = (
            cpu_workers(workers) if self.device.type == "cpu" else (1, 0)
        )
        self.pool: ThreadPoolExecutor | None = None
        self.lazy_batches = self.workers == 1  # searched one batch at a time, when asked

    @classmethod
    def load(
        cls,
        folder: str | Path | Sequence[str | Path],
        decode: DecodeConfig | None = None,
        device: str | torch.device = "auto",
        weights: str | Path | None = None,
        chunk_lines: int = 2000,
        strict: bool = False,
        dtype: str = "fp32",
        quantize: str | None = None,
        workers: int = 0,
        onednn: bool = True,
        ensemble_weights: Sequence[float] | None = None,
        tgt_lang: str | None = None,
    ) -> Translator:
        """Load a model folder (config.json, SentencePiece model(s), model.safetensors), or
        several as an ensemble (:mod:`nmt.decode.ensemble`).

        Args:
            folder: one model folder, or a list of them (one SentencePiece model).
            weights: a weights file instead of ``model.safetensors`` (one model only).
            dtype / quantize / onednn: see :func:`for_inference` (default: float32, through
                oneDNN on CPU).
            workers: see :class:`Translator` (default: one per CPU thread).
            ensemble_weights: one per folder (default: equal, summing to 1).
            tgt_lang: the target language of a multilingual model or a multi-target Marian
                import (tagged sources, :func:`nmt.data.targets.for_target`): the one
                of a call that names none; left out for a model of several, each line
                carries its tag (or each call names its language).

        Raises:
            CheckpointError: a file is missing or of another format version.
            ConfigError: an invalid dtype/quantize combination, negative ``workers``, a
                missing or unknown ``tgt_lang`` of a multilingual model,
                ensemble models with different SentencePiece models (both files named), or
                ``weights`` / ``ensemble_weights`` that do not fit the folders.
        """
        folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
        if len(folders) > 1 and weights is not None:
            raise ConfigError(
                "a weights file is for one model; for an ensemble, give model folders only"
            )
        loaded = [load_model(f, weights=weights, device=resolve_device(device)) for f in folders]
        models = [for_inference(model, dtype, quantize, onednn) for model, _ in loaded]
        config = loaded[0][1]
        pairs = config.get("pairs") or []
        base, model_tgt = load_tokenizer(folders[0]), config.get("tgt_lang")
        tokenizer = for_target(base, pairs, tgt_lang, model_tgt)
        targets = Targets(base, pairs, config.get("src_lang"), model_tgt)
        check_same_vocab(
            [Path(f) for f in folders], "the models of an ensemble need one vocabulary"
        )
        if len(models) == 1 and ensemble_weights is None:
            return cls(
                models[0], tokenizer, decode, chunk_lines, strict, workers, targets, folders[0]
            )
        n = len(models)
        ensemble = Ensemble(models, list(ensemble_weights or [1.0 / n] * n))
        return cls(ensemble, tokenizer, decode, chunk_lines, strict, workers, targets, folders[0])

    def check_options(self, d: DecodeConfig, prefixes: bool) -> None:
        """Raises :class:`ConfigError` for an alignment layer the model does not have, and
        :class:`CheckpointError` for ``shortlist`` where the model folder has none."""
        if d.shortlist:
            self.load_shortlist()
        if d.alignment:
            if isinstance(self.model, Ensemble):
                raise ConfigError("alignment reads one model's attention: not with an ensemble")
            check_layer(d.alignment_layer, self.model.cfg.n_decoder_layers)

    def load_shortlist(self) -> Shortlist:
        """The model folder's vocabulary shortlist, loaded on first use.

        Raises:
            CheckpointError: the folder has none (the error says how to build one), or one
                for another vocabulary.
            ConfigError: a model given without its folder.
        """
        if self.shortlist is None:
            if self.folder is None:
                raise ConfigError("shortlist: load the model with Translator.load(folder)")
            self.shortlist = load_shortlist(self.folder, self.model.cfg)
        return self.shortlist

    def search_rows(
        self, ids: list[list[int]], request: Request | None = None
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Batches of similar length (EOS counted), longest first, searched on the device (by
        the worker threads when there are several), yielded in that order."""
        request = request or Request(self.decode)
        batches = self.row_batches(ids, [i for i, x in enumerate(ids) if x], request.decode)

        def run(rows: list[int]) -> tuple[list[int], list[list[Hypothesis]]]:
            src = self.source_batch([ids[r] for r in rows])
            prefixes, seeds = request.prefixes, request.seeds
            prefix = None if prefixes is None else [prefixes[r] for r in rows]
            seed = None if seeds is None else [seeds[r] for r in rows]
            return rows, self.search(src, request.decode, prefix, seed)

        if self.workers == 1 or len(batches) == 1:
            yield from map(run, batches)
            return
        if self.pool is None:
            self.pool = worker_pool(self.workers, self.worker_threads)
        yield from self.pool.map(run, batches)

    def search(
        self,
        src: torch.Tensor,
        decode: DecodeConfig | None = None,
        prefixes: list[list[int]] | None = None,
        seeds: list[int] | None = None,
    ) -> list[list[Hypothesis]]:
        """Search ``(batch, src_len)`` ids with ``decode`` (default: the loaded settings), or
        sample when it says so (:mod:`nmt.decode.sampling`).

        Args:
            prefixes: each sentence's target prefix ids (``[]`` = none).
            seeds: each sentence's sampling seed (:func:`nmt.decode.sampling.sentence_seed`);
                required when sampling.

        With ``decode.shortlist``, the search runs over the batch's candidate target ids
        (:meth:`nmt.decode.shortlist.Shortlist.batch_vocab`, prefixes included).

        Returns:
            The nbest lists of each sentence; with ``decode.alignment``, the best hypothesis
            carries its cross-attention (:meth:`with_attention`).
        """
        d = decode or self.decode
        prefix = None if prefixes is None else prefix_tensor(prefixes, src.device)
        vocab_ids = self.load_shortlist().batch_vocab(src, prefixes) if d.shortlist else None
        if d.sampling:
            if seeds is None:
                raise ValueError("sampling needs one seed per sentence")
            found = sample(
                self.model,
                src,
                seeds,
                d.sampling_topk,
                d.sampling_topp,
                d.sampling_temperature,
                d.max_len_a,
                d.max_len_b,
                prefix,
            )
            nbest = [[h] for h in found]
        elif d.beam_size == 1:
            found = greedy_search(
                self.model, src, d.max_len_a, d.max_len_b, prefix, vocab_ids=vocab_ids
            )
            nbest = [[h] for h in found]
        else:
            nbest = beam_search(
                self.model,
                src,
                d.beam_size,
                d.length_penalty,
                d.max_len_a,
                d.max_len_b,
                d.nbest,
                prefix,
                vocab_ids,
            )
        return self.with_attention(src, nbest, d) if d.alignment else nbest

    def forced_scores(self, src: list[list[int]], tgt: list[list[int]]) -> list[float]:
        """Teacher-forced log-probabilities of a batch (:func:`nmt.decode.forced.forced_scores`)."""
        return forced_scores(self.model, self.source_batch(src), tgt)

    def source_batch(self, src: list[list[int]]) -> torch.Tensor:
        """Source ids (without EOS) as the model reads them: ``(batch, src_len)`` int64 on
        the device, each ending in the model's EOS, right-padded with its PAD."""
        cfg = self.model.cfg
        return pad(src, suffix=cfg.eos_id, pad_id=cfg.pad_id).to(self.device)

    def with_attention(
        self, src: torch.Tensor, nbest: list[list[Hypothesis]], d: DecodeConfig
    ) -> list[list[Hypothesis]]:
        """``nbest`` with each best hypothesis' cross-attention attached: the alignment
        layer's, averaged over its heads, ``(len(tokens) + 1, src_len)`` on the CPU (one
        teacher-forced decoder pass over the batch's best outputs,
        :func:`nmt.decode.attention.cross_attention`)."""
        layer = check_layer(d.alignment_layer, self.model.cfg.n_decoder_layers)
        weights = cross_attention(self.single_model(), src, [h[0].tokens for h in nbest], [layer])
        attention = weights[:, 0].mean(1)  # (batch, tgt_len + 1, src_len)
        return [
            [replace(h[0], attention=a[: len(h[0].tokens) + 1].cpu()), *h[1:]]
            for h, a in zip(nbest, attention)
        ]

    def cross_attention(self, src: list[list[int]], targets: list[list[int]]) -> list[torch.Tensor]:
        """Cross-attention of every decoder layer and head for each source (ids without EOS)
        translated into its target (ids without BOS and EOS), in one batched teacher-forced
        pass (:func:`nmt.decode.attention.cross_attention`).

        Returns:
            One ``(n_layers, n_heads, len(target) + 1, len(source) + 1)`` float32 tensor on
            the CPU per row (EOS last on both sides).

        Raises:
            ConfigError: an ensemble (attention is read from one model).
        """
        if not src:
            return []
        weights = cross_attention(self.single_model(), self.source_batch(src), targets).cpu()
        return [w[:, :, : len(t) + 1, : len(s) + 1] for w, s, t in zip(weights, src, targets)]

    def single_model(self) -> Transformer:
        """The model, when it is one.

        Raises:
            ConfigError: an ensemble (attention is read from one model).
        """
        if isinstance(self.model, Ensemble):
            raise ConfigError("alignment reads one model's attention: not with an ensemble")
        return self.model
