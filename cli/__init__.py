"""The ``nmt`` command-line interface: parses options, calls :mod:`nmt`, renders with rich.

Importing :mod:`nmt` (which every command does) caps oneDNN's kernel cache; see there.
"""
