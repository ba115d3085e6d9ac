"""A CTranslate2 model folder written by ``nmt export``, and the optional ``ctranslate2``
package: what the export (:mod:`nmt.interop.export`), the engine (:mod:`nmt.decode.ct2`),
model loading (:mod:`nmt.decode.loading`, :mod:`nmt.serve.registry`) share, without torch or
ctranslate2 imported.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from nmt.errors import MissingDependencyError
from nmt.fileio import read_versioned_json

CT2_WEIGHTS = "model.bin"  # what CTranslate2 writes; its presence marks a CTranslate2 folder
EXPORT_INFO = "nmt.json"  # written by nmt export beside CTranslate2's own config.json
INSTALL_HINT = "pip install 'nmt[ctranslate2]'"


def import_ctranslate2() -> ModuleType:
    """The ``ctranslate2`` module.

    Raises:
        MissingDependencyError: it is not installed (the message says how to install it).
    """
    try:
        import ctranslate2
    except ImportError:
        raise MissingDependencyError(
            f"the CTranslate2 engine needs the ctranslate2 package; install it with {INSTALL_HINT}"
        ) from None
    return ctranslate2


def is_ctranslate2_dir(path: str | Path) -> bool:
    """True for a CTranslate2 model folder (it holds ``model.bin``); needs no ctranslate2."""
    return (Path(path) / CT2_WEIGHTS).is_file()


def read_export_info(folder: str | Path) -> dict[str, Any]:
    """The ``nmt.json`` that ``nmt export`` writes into a CTranslate2 folder.

    Raises:
        CheckpointError: missing (not written by ``nmt export``), unreadable, or another
            format version.
    """
    return read_versioned_json(
        Path(folder) / EXPORT_INFO,
        "translate only CTranslate2 folders written by nmt export",
        "export the model again with this nmt",
    )
