"""nmt.train.malloc: training sets glibc's malloc thresholds, translation leaves glibc's defaults,
and NMT_MALLOC_TUNING=0 or glibc's own variables leave them alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from skips import skip, skipif

# In a fresh process: run SETUP (the start of training tunes malloc), then allocate 4 MiB with
# malloc and ask mallinfo2 how many blocks are mmapped. glibc's default mmap threshold starts
# at 128 KiB, so a 4 MiB block is mmapped unless the threshold was raised (nmt.train.malloc sets
# 32 MiB).
PROBE = r"""
import ctypes, json, sys
import nmt.train.malloc
SETUP

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblks
block = libc.malloc(4 << 20)
mmapped = libc.mallinfo2().hblks - before
libc.free(block)
print(json.dumps({"applied": nmt.train.malloc._applied, "mmapped": mmapped}))
"""
TRAINING = "nmt.train.malloc.tune()  # what nmt.train.run.train does first"


def probe(setup: str = TRAINING, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.pop("NMT_MALLOC_TUNING", None)
    environ.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.replace("SETUP", setup)],
        env={**environ, **env},
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 and "mallinfo2" in out.stderr:
        skip("glibc", "this C library has no mallinfo2")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@skipif(not sys.platform.startswith("linux"), "glibc", "not Linux")
def test_training_raises_the_mmap_threshold() -> None:
    tuned = probe()
    assert tuned["applied"] == {
        "mmap_threshold": 32 << 20,
        "trim_threshold": 2**31 - 1,
        "top_pad": 1 << 30,
    }
    assert tuned["mmapped"] == 0  # the 4 MiB block came from the heap


@skipif(not sys.platform.startswith("linux"), "glibc", "not Linux")
@pytest.mark.parametrize("env", [{"NMT_MALLOC_TUNING": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}])
def test_off_switch_and_glibc_variables_leave_malloc_alone(env: dict[str, str]) -> None:
    untouched = probe(**env)
    assert untouched["applied"] == {}
    assert untouched["mmapped"] == 1  # glibc's default: a 4 MiB block is mmapped


@skipif(not sys.platform.startswith("linux"), "glibc", "not Linux")
def test_translation_keeps_glibc_defaults() -> None:
    """Importing the whole CLI (every command's module, nmt.train.run included) and loading the
    translation code tunes nothing: only training starts it."""
    untouched = probe("import cli.main, nmt.decode.translate, nmt.serve.schema")
    assert untouched["applied"] is None
    assert untouched["mmapped"] == 1


def test_train_tunes_malloc_first(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """nmt.train.run.train calls nmt.train.malloc.tune before anything else (here it then fails on a
    missing corpus)."""
    import nmt.train.malloc
    import nmt.train.run
    from nmt.config import ModelConfig, TrainConfig
    from nmt.errors import InputError

    calls: list[str] = []
    monkeypatch.setattr(nmt.train.malloc, "tune", lambda: calls.append("tune") or {})
    with pytest.raises(InputError):
        nmt.train.run.train(
            tmp_path / "missing", None, tmp_path / "run", ModelConfig(), TrainConfig()
        )
    assert calls == ["tune"]
