"""The nmt package as a whole: the library never imports the command-line layer."""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys

import nmt

# Import every nmt module in a fresh process, then list which of these got imported too.
_IMPORT_ALL = """
import importlib, json, sys
names = sys.argv[1:]
for name in names:
    importlib.import_module(name)
print(json.dumps(sorted({"typer", "rich", "cli"} & set(sys.modules))))
"""


# Modules that need the optional serve extra (FastAPI, uvicorn).
SERVE_EXTRA = {"nmt.serve.app", "nmt.serve.schema", "nmt.serve.libretranslate"}


def test_no_nmt_module_imports_typer_rich_or_cli() -> None:
    """STYLE: the library reports progress through callbacks; typer and rich belong to cli."""
    names = sorted(m.name for m in pkgutil.walk_packages(nmt.__path__, "nmt."))
    assert {
        "nmt.decode.translate",
        "nmt.train.trainer",
        "nmt.data.catalog",
        "nmt.interop.export",
    } <= set(names)
    if importlib.util.find_spec("fastapi") is None:  # the serve extra is not installed
        names = [n for n in names if n not in SERVE_EXTRA]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, *names], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", f"imported along with {names}"


_TORCH_FREE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print("torch" in sys.modules)
"""


def test_file_utilities_scoring_and_data_preparation_do_not_import_torch() -> None:
    """``nmt score``, the corpus-encoding worker processes, finding a CTranslate2 folder and
    the server's settings start without loading torch."""
    names = [
        "nmt.decode.ct2_folder",
        "nmt.fileio",
        "nmt.evaluate.score",
        "nmt.serve.asgi",
        "nmt.serve.body",
        "nmt.serve.config",
        "nmt.data.store",
        "nmt.data.textio",
        "nmt.data.tokenizer",
    ]
    done = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, *names], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "False"
