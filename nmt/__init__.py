"""nmt: neural machine translation — train, translate and score from one toolkit.

The library never imports typer or rich; the ``cli`` package renders its results.
"""

import os

# oneDNN caches a compiled kernel per input shape; with variable sentence lengths its default
# cache of 1,024 kernels held about 1 GiB more during bf16 CPU training, and a cache of 16 was
# no slower, in training or in float32 translation (docs/benchmarks.md, "Memory"). oneDNN
# reads this when it first builds a kernel, so setting it here works even after torch is
# imported; a value in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

# Keep freed large buffers in the process instead of faulting them in again at every training
# step (nmt.malloc; NMT_MALLOC_TUNING=0 turns it off).
from nmt import malloc as _malloc  # noqa: E402

_malloc.tune()

__version__ = "0.1.0"
