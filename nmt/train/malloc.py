"""glibc malloc settings that stop large tensors being returned to the kernel at every step.

A training step allocates and frees the same large buffers each time (the logits of a
2k-token batch over an 8k vocabulary alone are ~65 MB). With glibc's defaults, buffers above
the (dynamic) mmap threshold are mapped fresh and unmapped on free, and the top of the heap is
trimmed back, so each step faults the same memory in again: a 30-minute ``make demo`` on a
2-core AMD EPYC (Zen 3) spent 384 s of system time against 3,220 s of user time, with
114 million minor page faults. Keeping freed memory in the process instead is what the
environment variables ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296
MALLOC_TOP_PAD_=1073741824`` do; :func:`tune` sets the same through ``mallopt(3)`` when
training starts (:func:`nmt.train.run.train`), so nobody has to export them (docs/benchmarks.md,
"Memory allocator").

The cost is memory that stays with the process after a peak instead of going back to the
system. Translation and serving therefore keep glibc's defaults: with never-trimmed heaps,
the arenas of two translation worker threads crept upwards over a long input (+61 MiB from
20k to 200k lines, still growing), where glibc's defaults stayed within 425-435 MiB.
``NMT_MALLOC_TUNING=0`` turns it off; so does setting any
of glibc's own ``MALLOC_*_`` variables (they then apply as given). On a C library other than
glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # bytes; glibc's maximum on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1  # bytes; mallopt takes an int: "never trim" in practice
TOP_PAD = 1024 * 1024 * 1024  # bytes of extra heap asked for at each growth (virtual only)

GLIBC_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)

_applied: dict[str, int] | None = None


def tune() -> dict[str, int]:
    """Apply the settings above once per process; returns what was set (empty: nothing).

    Nothing is set when ``NMT_MALLOC_TUNING`` is ``0``, when one of :data:`GLIBC_VARIABLES`
    is in the environment, or when the C library has no ``mallopt`` (not glibc). Never
    raises.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    if os.environ.get("NMT_MALLOC_TUNING", "1") == "0":
        return _applied
    if any(name in os.environ for name in GLIBC_VARIABLES):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {
        "mmap_threshold": (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        "trim_threshold": (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        "top_pad": (M_TOP_PAD, TOP_PAD),
    }
    for name, (param, value) in settings.items():
        if mallopt(param, value) == 1:  # 1 = success
            _applied[name] = value
    return _applied
