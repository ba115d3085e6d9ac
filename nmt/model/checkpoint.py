"""Model folders and checkpoints: atomic writes, safe loads, a checked format version.

A model folder (what ``nmt translate -m DIR`` needs, nothing else):

- ``config.json``: format version, languages, model shape, training recipe (human-readable);
- the SentencePiece model(s): ``spm.model`` (joint), or ``spm.src.model`` and
  ``spm.tgt.model`` (separate vocabularies), or an imported Marian model's files
  (:mod:`nmt.data.vocab`);
- ``model.safetensors``: the weights to translate with (in a run folder: the best by
  validation BLEU); a run folder also has ``last.safetensors``, ``checkpoints/`` and
  ``resume.pt`` (optimizer, schedule, step, RNG and early-stopping state).

Weights are safetensors and never go through pickle; ``resume.pt`` is loaded with
``torch.load(weights_only=True)``. Every write is atomic (:mod:`nmt.fileio`), so a crash
leaves the old file intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nmt.config import ModelConfig
from nmt.config_file import from_dict
from nmt.errors import CheckpointError
from nmt.fileio import (  # noqa: F401 - re-exported: the checkpoint API names them
    FORMAT_VERSION,
    READABLE_VERSIONS,
    atomic_write,
    read_versioned_json,
    removed_on_error,
    write_json,
)
from nmt.model.transformer import Transformer

CONFIG_FILE, SPM_FILE, WEIGHTS_FILE = "config.json", "spm.model", "model.safetensors"
RESUME_FILE = "resume.pt"


def save_weights(path: str | Path, model: Transformer, step: int = 0) -> None:
    """Atomically write the model's weights as safetensors (plain module names, no
    ``module.``/``_orig_mod.`` prefixes: unwrap DDP/compiled models before calling)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format_version": str(FORMAT_VERSION), "step": str(step)}
    blob = st_save(state, metadata=meta)
    atomic_write(path, lambda f: f.write(blob))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (no code runs while loading).

    Raises:
        CheckpointError: missing or unreadable file, or another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return st_load(path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model or run folder, its format version checked.

    Raises:
        CheckpointError: the file is missing, not JSON, or written by another format version.
    """
    return read_versioned_json(
        Path(folder) / CONFIG_FILE,
        f"is {folder} a model folder written by nmt?",
        "use the nmt release that wrote it, or retrain",
    )


def load_model(
    folder: str | Path, weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[Transformer, dict[str, Any]]:
    """Rebuild the model of a model folder from its config and load its weights.

    Args:
        folder: a model or run folder.
        weights: a weights file to use instead of ``model.safetensors`` (a name inside the
            folder such as ``last.safetensors``, or a path).

    Returns:
        The model in eval mode on ``device``, and the folder's config dict.

    Raises:
        CheckpointError: a file is missing, another format version, or the weights do not fit
            the config.
    """
    folder = Path(folder)
    config = read_config(folder)
    model_cfg = from_dict(ModelConfig, config["model"], f"{folder / CONFIG_FILE} [model]")
    path = folder / WEIGHTS_FILE
    if weights is not None:  # a bare name is the folder's file (else a path as given)
        path = Path(weights)
        if len(path.parts) == 1 and (folder / path).exists():
            path = folder / path
        elif len(path.parts) == 1 and not path.is_file():
            found = sorted(p.name for p in folder.glob("*.safetensors"))
            raise CheckpointError(
                f"{weights}: weights file not found in {folder} (nor as a path from the "
                f"current folder); {folder} holds {', '.join(found) or 'no .safetensors file'}"
            )
    state = load_weights(path)
    model = Transformer(model_cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    resized = sorted(k for k, v in state.items() if k in shapes and v.shape != shapes[k])
    if resized:  # load_state_dict would raise a RuntimeError
        raise CheckpointError(
            f"{path}: weights do not match {folder / CONFIG_FILE} (other shapes: "
            f"{', '.join(resized[:5])})"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match {folder / CONFIG_FILE} (missing: "
            f"{', '.join(missing[:5]) or '-'}; unexpected: {', '.join(unexpected[:5]) or '-'})"
        )
    return model.to(device).eval(), config


def save_resume(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write a resume checkpoint (tensors, numbers, strings, lists and dicts only).

    ``torch.save`` streams into the temporary file (:func:`~nmt.fileio.atomic_write`): no
    copy of the whole checkpoint is built in memory first (3.4 GB for ``big`` with a 32k
    vocabulary; ``benchmarks/checkpoint_write.py`` times both ways).
    """
    atomic_write(path, lambda f: torch.save(state, f))


def load_resume(path: str | Path) -> dict[str, Any]:
    """Load a resume checkpoint without unpickling code (``weights_only=True``).

    Raises:
        CheckpointError: the file is unreadable or of another format version.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: cannot load resume checkpoint ({exc})") from None
    if state.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: resume checkpoint format {state.get('format_version')}, expected "
            f"{FORMAT_VERSION}; start a new run folder"
        )
    return state
