"""nmt: neural machine translation — train, translate and score from one toolkit.

The library never imports typer or rich; the ``cli`` package renders its results.
"""

__version__ = "0.1.0"
