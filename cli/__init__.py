"""The ``nmt`` command-line interface: parses options, calls :mod:`nmt`, renders with rich."""
