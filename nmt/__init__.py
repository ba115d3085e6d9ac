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

# glibc malloc tuning (nmt.train.malloc) is applied by nmt.train.run.train only: it keeps
# freed memory in the process, which a training step reuses at once, but which let a long
# translation by several worker threads creep upwards (docs/benchmarks.md, "Translation memory").

__version__ = "0.1.0"
