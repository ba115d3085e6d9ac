"""The ``nmt`` command-line interface: parses options, calls :mod:`nmt`, renders with rich."""

import os

# oneDNN caches a compiled kernel per input shape; with variable sentence lengths its default
# cache of 1,024 kernels held about 1 GiB more during bf16 CPU training, and a cache of 16 was
# no slower (docs/benchmarks.md, "Memory"). Set before torch is imported; a value in the
# environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
