"""Translation through a CTranslate2 model folder written by ``nmt export``.

:class:`CT2Translator` has the interface of :class:`nmt.decode.translate.Translator` (lines in,
:class:`~nmt.decode.results.Translation` out, one per line, in order) and the same tokenization,
truncation, length limit and hypothesis ranking; only the search runs in CTranslate2 (Klein et
al. 2020). ``ctranslate2`` is an optional dependency, imported only when it is used.

The search itself, and how it maps onto CTranslate2's, is :mod:`nmt.decode.ct2_search`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nmt.config import DecodeConfig
from nmt.data.targets import Targets, for_target
from nmt.data.vocab import load_tokenizer
from nmt.decode.ct2_folder import import_ctranslate2, read_export_info
from nmt.decode.ct2_search import CT2Search
from nmt.decode.shortlist import VMAP_FILE
from nmt.decode.translate import cpu_workers
from nmt.errors import CheckpointError, ConfigError


def ct2_device(device: str) -> tuple[str, int]:
    """nmt's ``auto``/``cpu``/``cuda``/``cuda:N`` → CTranslate2's ``(device, device_index)``.

    Raises:
        ConfigError: another name (``gpu``).
    """
    name, colon, index = str(device).partition(":")
    if not (
        name in ("auto", "cpu") and not colon or name == "cuda" and (not colon or index.isdigit())
    ):
        raise ConfigError(f"device {device!r}: choose one of auto, cpu, cuda, cuda:N")
    return name, int(index) if index else 0


def ct2_threads(device: str, inter_threads: int = 0, intra_threads: int = 0) -> tuple[int, int]:
    """CTranslate2's ``(inter_threads, intra_threads)``: batches run in parallel, and threads
    per batch. 0 picks them: on CPU as the torch engine's workers
    (:func:`nmt.decode.translate.cpu_workers`: one single-threaded worker per thread torch
    would use,
    so ``OMP_NUM_THREADS`` applies); on a GPU, one worker and CTranslate2's default.

    On CPU, parallel batches beat parallel matrix products for models of this size: on 2
    cores, 2 workers × 1 thread translated 1.2–1.6× faster than 1 worker × 2 threads in
    float32, 3–9× in int8 (``small`` preset, batch 32, beam 5 and greedy, measured while
    another process used the cores, which hurts threads that wait on each other most).
    """
    if device != "cpu":
        return inter_threads or 1, intra_threads
    if intra_threads and not inter_threads:
        return max(1, torch.get_num_threads() // intra_threads), intra_threads
    workers, threads = cpu_workers(inter_threads)
    return workers, intra_threads or threads


class CT2Translator(CT2Search):
    """A CTranslate2 translator with nmt's tokenizer, batching and output handling, loaded from
    a folder written by ``nmt export`` (:meth:`load`); arguments as :class:`CT2Search`."""

    @classmethod
    def load(
        cls,
        folder: str | Path,
        decode: DecodeConfig | None = None,
        device: str = "auto",
        chunk_lines: int = 2000,
        intra_threads: int = 0,
        compute_type: str = "default",
        strict: bool = False,
        inter_threads: int = 0,
        tgt_lang: str | None = None,
    ) -> CT2Translator:
        """Load a folder written by ``nmt export --format ctranslate2``.

        Args:
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            intra_threads / inter_threads: threads per batch / batches run in parallel
                (0 = :func:`ct2_threads` picks).
            compute_type: CTranslate2 compute type (``default`` = as exported).
            tgt_lang: the target language of a multilingual model
                (:func:`nmt.data.targets.for_target`).

        Raises:
            MissingDependencyError: ctranslate2 is not installed.
            CheckpointError: the folder was not written by ``nmt export``, or CTranslate2
                cannot load it (a file missing or damaged).
            ConfigError: an unknown device, or CUDA where CTranslate2 sees none.
        """
        ct2 = import_ctranslate2()
        folder = Path(folder)
        info = read_export_info(folder)
        name, index = ct2_device(device)
        if name == "auto":
            name = "cuda" if ct2.get_cuda_device_count() > 0 else "cpu"
        if name == "cuda" and ct2.get_cuda_device_count() == 0:
            raise ConfigError(f"device {device!r}: CTranslate2 sees no CUDA device here; use cpu")
        inter, intra = ct2_threads(name, inter_threads, intra_threads)
        # Creating a Translator sets this thread's OpenMP thread count to ``intra`` (1 on CPU by
        # default), which torch reads: put it back, or whatever runs torch in this process
        # afterwards (nmt distill's training, a torch model served beside it) runs on one core.
        threads = torch.get_num_threads()
        try:
            translator = ct2.Translator(
                str(folder),
                device=name,
                device_index=index,
                compute_type=compute_type,
                inter_threads=inter,
                intra_threads=intra,
            )
        except (RuntimeError, ValueError) as exc:  # a damaged export: a missing or bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{folder}: CTranslate2 could not load it ({first}); export it again with "
                "nmt export"
            ) from None
        finally:
            torch.set_num_threads(threads)
        max_positions = int(info["model"]["max_positions"])
        pairs, model_tgt = info.get("pairs") or [], info.get("tgt_lang")
        base = load_tokenizer(folder)
        tokenizer = for_target(base, pairs, tgt_lang, model_tgt)
        targets = Targets(base, pairs, info.get("src_lang"), model_tgt)
        vmap = folder / VMAP_FILE
        return cls(
            translator, tokenizer, decode, chunk_lines, max_positions, strict, targets,
            vmap if vmap.is_file() else None,
        )  # fmt: skip

    def check_options(self, d: DecodeConfig, prefixes: bool) -> None:
        """Raises :class:`ConfigError` for what only the torch engine does: alignment (from a
        decoder layer chosen per call) and sampling (one seeded generator per sentence); and
        for ``shortlist`` where the folder has no vocabulary map."""
        if d.shortlist and self.vmap is None:
            raise ConfigError(
                "shortlist (--shortlist): this CTranslate2 folder has no vocabulary map "
                f"({VMAP_FILE}); build a shortlist in the model folder (nmt shortlist) and "
                "export it again, or drop --shortlist"
            )
        asked = [
            name
            for name, on in (
                ("alignment", d.alignment),
                ("sampling", d.sampling),
            )
            if on
        ]
        if asked:
            raise ConfigError(
                f"{', '.join(asked)}: supported by the torch engine (--engine torch on the model "
                "folder that nmt export read), not by the ctranslate2 engine"
            )
