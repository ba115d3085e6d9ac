"""Errors that nmt raises for problems the user can fix.

Every error carries a message that says what is wrong and what to do; the CLI prints it on one
line (no traceback) and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class NMTError(Exception):
    """Base class of every error nmt raises on purpose."""


class InputError(NMTError):
    """Bad input data, located by file and (1-based) line when known.

    Args:
        message: what is wrong and what to do.
        path: the file at fault.
        line: 1-based line number in ``path``, or ``None`` when the whole file is at fault.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class ConfigError(NMTError):
    """An unknown or invalid configuration setting."""


class CheckpointError(NMTError):
    """A model folder or checkpoint that is missing, incomplete or of another format version."""


class TrainingError(NMTError):
    """Training cannot go on (for example the loss keeps becoming NaN)."""


class MissingDependencyError(NMTError):
    """An optional package that a feature needs is not installed."""
