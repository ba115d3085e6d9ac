"""The only reasons a test may be skipped, each with why it is allowed.

A test skips through :func:`skip` or :func:`skipif` with one of the keys of :data:`ALLOWED`;
the reason then starts with ``[key]``. ``conftest.py`` turns every other skip (a bare
``pytest.skip``, ``pytest.importorskip``, a ``skipif`` mark with another reason) into a
failure, so that a run cannot pass green while half the suite did not run: a missing Python
package is an install (the ``dev`` extra, ``make install``), missing Multi30k data is an error
naming where it was looked for (``make data``), and only what a machine cannot have is
skipped.
"""

from __future__ import annotations

import re
from typing import NoReturn

import pytest

ALLOWED: dict[str, str] = {
    "cuda": "needs a CUDA GPU and torch sees none here (benchmarks/gpu_check.sh runs these "
    "on a machine with one)",
    "cuda-build": "the GPU is there but this build cannot use it (torch without NCCL, or a "
    "CPU-only CTranslate2 wheel)",
    "gpu-present": "checks what happens without a CUDA GPU, and this machine has one",
    "chromium": "needs headless Chromium and chromedriver (apt-get install chromium "
    "chromium-driver); .ci/run installs them and fails when it cannot",
    "no-avx2": "checks the AVX2 profile, which a CPU without AVX2 cannot run",
    "glibc": "checks glibc's malloc (mallinfo2: glibc 2.33 or later, on Linux)",
    "onednn": "this torch build has no oneDNN linear (torch's x86 wheels have one)",
}

_KEY = re.compile(r"\[([\w-]+)\]")


def reason(key: str, detail: str = "") -> str:
    """The skip reason for ``key``: ``[key] why it is allowed`` and ``detail`` if given.

    Raises:
        KeyError: ``key`` is not in :data:`ALLOWED`.
    """
    text = f"[{key}] {ALLOWED[key]}"
    return f"{text}: {detail}" if detail else text


def skip(key: str, detail: str = "") -> NoReturn:
    """Skip the running test for the allowed reason ``key`` (see :data:`ALLOWED`)."""
    __tracebackhide__ = True  # the skip is reported at the test's line, not this one
    pytest.skip(reason(key, detail))


def skipif(condition: bool, key: str, detail: str = "") -> pytest.MarkDecorator:
    """A ``skipif`` mark for the allowed reason ``key`` (see :data:`ALLOWED`)."""
    return pytest.mark.skipif(condition, reason=reason(key, detail))


def allowed_key(message: str) -> str | None:
    """The allow-list key a skip message (``Skipped: [key] ...`` or ``[key] ...``) names, or
    ``None`` when it names none of :data:`ALLOWED`."""
    text = message.removeprefix("Skipped:").strip()
    found = _KEY.match(text)
    return found.group(1) if found and found.group(1) in ALLOWED else None
