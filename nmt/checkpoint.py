"""Model folders and checkpoints: atomic writes, safe loads, a checked format version.

A model folder (what ``nmt translate -m DIR`` needs, nothing else):

- ``config.json``: format version, languages, model shape, training recipe (human-readable);
- ``spm.model``: the joint SentencePiece model;
- ``model.safetensors``: the weights to translate with (in a run folder: the best by
  validation BLEU); a run folder also has ``last.safetensors``, ``checkpoints/`` and
  ``resume.pt`` (optimizer, schedule, step, RNG and early-stopping state).

Weights are safetensors and never go through pickle; ``resume.pt`` is loaded with
``torch.load(weights_only=True)``. Every write goes to a temporary file in the same folder,
is flushed and fsynced, then renamed over the target, so a crash leaves the old file intact.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nmt.config import ModelConfig, from_dict
from nmt.errors import CheckpointError
from nmt.model import Transformer

FORMAT_VERSION = 1
CONFIG_FILE, SPM_FILE, WEIGHTS_FILE = "config.json", "spm.model", "model.safetensors"
RESUME_FILE = "resume.pt"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` so that it is either complete or untouched.

    The data goes to a temporary file in the same folder, is flushed and fsynced, and is
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows). On any error the
    temporary file is removed and the previous ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def removed_on_error(folder: str | Path) -> Iterator[None]:
    """Remove ``folder`` if the block fails and the folder did not exist before it, so
    that a failed start leaves nothing behind (an existing folder is never touched)."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _read_umask() -> int:
    """The process umask (read once at import, by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as indented UTF-8 JSON."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


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


def read_versioned_json(path: Path, missing_hint: str, version_hint: str) -> dict[str, Any]:
    """A JSON file that nmt wrote, its ``format_version`` checked.

    Args:
        missing_hint / version_hint: what to tell the user when the file is missing / of
            another format version.

    Raises:
        CheckpointError: the file is missing, not JSON, or of another format version.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {missing_hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written with model format version {version}, this nmt reads version "
            f"{FORMAT_VERSION}; {version_hint}"
        )
    return data


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
    path = Path(weights) if weights is not None else folder / WEIGHTS_FILE
    if not path.is_absolute() and not path.exists():
        path = folder / path
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
    """Atomically write a resume checkpoint (tensors, numbers, strings, lists and dicts only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_resume(path: str | Path) -> dict[str, Any]:
    """Load a resume checkpoint without unpickling code (``weights_only=True``).

    Raises:
        CheckpointError: the file is unreadable or of another format version.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: cannot load resume checkpoint ({exc})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: resume checkpoint format {state.get('format_version')}, expected "
            f"{FORMAT_VERSION}; start a new run folder"
        )
    return state
