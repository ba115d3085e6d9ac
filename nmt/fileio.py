"""File utilities that need no torch: atomic writes, durable renames, versioned JSON.

Every write goes to a temporary file in the same folder, is flushed and fsynced, then renamed
over the target (``os.replace``), and the folder is fsynced, so a crash leaves either the old
file or the new one, never half of one. The data-preparation worker processes, ``nmt score``
and the checkpoint code share these without importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

from nmt.errors import CheckpointError

# Of model folders, data folders, exports and resume checkpoints: the version nmt writes.
# 2: a model config may set the options of imported Marian models (activation, output_bias,
# position_layout, scale_embeddings, pad_id/bos_id/eos_id) and a model folder may hold
# vocab.json + source.spm + target.spm instead of spm.model. 3: separate vocabularies: a model
# config may set src_vocab_size (a source embedding of its own), a model or data folder may
# hold spm.src.model + spm.tgt.model, and a data folder's meta.json records vocab_layout.
# Versions 1 and 2 are read as well: their models take the new options' defaults, which are
# what those models were.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` so that it is either complete or untouched.

    The data goes to a temporary file in the same folder, is flushed and fsynced, and is
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows). On any error the
    temporary file is removed and the previous ``path`` is left as it was. A file that is
    replaced keeps its permissions (a private 0600 output stays private), and a symbolic link
    is written through (its target is replaced, the link stays).

    Tests kill the process at a fixed point of the write through :data:`KILL_AT_ENV`.

    Raises:
        OSError: ``path`` is a folder, or cannot be written (before anything is written).
    """
    kill_at = _kill_point(Path(path).name) if KILL_AT_ENV in os.environ else None
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~UMASK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)  # mkstemp makes 0600: the old file's mode, or the usual one
        with os.fdopen(fd, "wb") as f:
            write(cast(BinaryIO, _DyingFile(f)) if kill_at == "mid-write" else f)
            f.flush()
            if kill_at == "before-fsync":
                _kill_self()
            os.fsync(f.fileno())
        if kill_at == "before-rename":
            _kill_self()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# Test-only: ``NAME:POINT`` makes the process kill itself with SIGKILL while writing the file
# named NAME (e.g. ``resume.pt``), at POINT, one of KILL_POINTS: after half of the first write
# call past 4 KiB (a partial temporary file), after the last write and flush but before the
# fsync, or after the fsync but before the rename. Read only when the variable is set.
KILL_AT_ENV = "NMT_TEST_KILL_AT"
KILL_POINTS = ("mid-write", "before-fsync", "before-rename")
_MID_WRITE_BYTES = 4096


def _kill_point(name: str) -> str | None:
    """The point of :data:`KILL_AT_ENV` at which a write of file ``name`` dies, if any."""
    target, _, point = os.environ[KILL_AT_ENV].rpartition(":")
    if point not in KILL_POINTS:
        raise ValueError(
            f"{KILL_AT_ENV}={os.environ[KILL_AT_ENV]!r}: POINT is one of {KILL_POINTS}"
        )
    return point if target == name else None


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _DyingFile:
    """A binary file that kills the process in the middle of the write call that takes it
    past :data:`_MID_WRITE_BYTES`, having written (and flushed) half of that call's bytes."""

    def __init__(self, f: BinaryIO):
        self.f, self.written = f, 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.written + len(view) <= _MID_WRITE_BYTES:
            self.written += len(view)
            return self.f.write(view)
        self.f.write(view[: max(1, len(view) // 2)])
        self.f.flush()
        _kill_self()
        raise AssertionError("unreachable: the process was killed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


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


def check_output_folder(out: Path, source: Path, overwrite: bool) -> None:
    """Check that folder ``out`` may be written from ``source`` (a model folder being read):
    not an existing file, not ``source`` itself nor a folder holding it (replacing ``out``
    would delete what is being read), and not an existing folder unless ``overwrite``.

    Raises:
        CheckpointError: as above, naming both paths.
    """
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a folder; choose another -o")
    if source.resolve().is_relative_to(out.resolve()):
        raise CheckpointError(
            f"-o {out} holds the model being read ({source}), which replacing it would delete: "
            "write to another folder"
        )
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: already exists; remove it or pass --overwrite to replace it")


def _read_umask() -> int:
    """The process umask (read once at import, by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def fsync_dir(folder: Path) -> None:
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
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: written with model format version {version}, this nmt reads version "
            f"{FORMAT_VERSION} (and older: {', '.join(map(str, READABLE_VERSIONS[:-1]))}); "
            f"{version_hint}"
        )
    return data
