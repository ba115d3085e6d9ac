"""Which engine translates a model folder: :func:`load_translator` loads nmt folders with the
torch engine (:class:`nmt.decode.translate.Translator`, an ensemble for several) and folders written
by ``nmt export`` with CTranslate2 (:class:`nmt.decode.ct2.CT2Translator`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nmt.config import DecodeConfig
from nmt.decode.ct2 import CT2Translator
from nmt.decode.ct2_folder import is_ctranslate2_dir
from nmt.decode.translate import Translator
from nmt.errors import ConfigError

ENGINES = ("auto", "torch", "ctranslate2")


def load_translator(
    folder: str | Path | Sequence[str | Path],
    decode: DecodeConfig | None = None,
    engine: str = "auto",
    device: str = "auto",
    weights: str | Path | None = None,
    chunk_lines: int = 2000,
    strict: bool = False,
    dtype: str = "fp32",
    quantize: str | None = None,
    workers: int = 0,
    ensemble_weights: Sequence[float] | None = None,
    tgt_lang: str | None = None,
) -> Translator | CT2Translator:
    """Load a model folder with the engine asked for.

    Args:
        engine: ``torch`` (:class:`nmt.decode.translate.Translator`), ``ctranslate2``
            (:class:`CT2Translator`, a folder written by ``nmt export``), or ``auto``:
            ctranslate2 when :func:`is_ctranslate2_dir`, else torch.
        weights: a weights file instead of ``model.safetensors`` (torch only).
        strict: raise for an over-long source instead of cutting it with a warning.
        dtype / quantize: torch engine only (:func:`nmt.decode.translate.for_inference`); a
            CTranslate2 model keeps the quantization it was exported with.
        workers: on CPU, batches translated at once (:func:`nmt.decode.translate.cpu_workers`;
            CTranslate2's ``inter_threads``); 0 = one single-threaded worker per CPU thread.
        folder / ensemble_weights: several folders are an ensemble (torch engine only,
            :mod:`nmt.decode.ensemble`), with these weights (default: equal).
        tgt_lang: the target language of a multilingual model (:mod:`nmt.data.multilingual`).

    Raises:
        ConfigError: unknown engine, ``weights`` with the ctranslate2 engine, or a
            CTranslate2 export given to the torch engine.
        MissingDependencyError: ctranslate2 asked for (or detected) but not installed.
        CheckpointError: a file is missing or of another format version.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}")
    if not isinstance(folder, (str, Path)):
        if len(folder) > 1 and (engine == "ctranslate2" or any(map(is_ctranslate2_dir, folder))):
            raise ConfigError(
                "ensembles are supported by the torch engine: give nmt model folders, not "
                "CTranslate2 exports"
            )
        if len(folder) > 1 or ensemble_weights is not None:
            return Translator.load(
                folder,
                decode,
                device,
                weights,
                chunk_lines,
                strict,
                dtype,
                quantize,
                workers,
                ensemble_weights=ensemble_weights,
                tgt_lang=tgt_lang,
            )
        folder = folder[0]
    if engine == "torch" and is_ctranslate2_dir(folder):
        raise ConfigError(
            f"{folder} is a CTranslate2 export (written by nmt export): translate it with "
            "--engine ctranslate2 (or auto), or give the torch engine the model folder that "
            "nmt export read"
        )
    if engine == "torch" or (engine == "auto" and not is_ctranslate2_dir(folder)):
        return Translator.load(
            folder, decode, device, weights, chunk_lines, strict, dtype, quantize, workers,
            tgt_lang=tgt_lang,
        )  # fmt: skip
    if dtype != "fp32" or quantize is not None:
        raise ConfigError(
            "--dtype/--quantization apply to the torch engine; a CTranslate2 model keeps the "
            "quantization given to nmt export"
        )
    if weights is not None:
        raise ConfigError(
            "weights apply to the torch engine; export those weights with nmt export --weights"
        )
    return CT2Translator.load(
        folder, decode, device, chunk_lines=chunk_lines, strict=strict, inter_threads=workers,
        tgt_lang=tgt_lang,
    )  # fmt: skip
