"""``nmt`` with one bug injected, for the companion tests of the tolerances that compare runs in
other processes (``tests/agreement.py``'s table): ``python tests/bugged_nmt.py BUG ARGS...``
runs ``nmt ARGS...`` with ``BUG`` in place (torchrun runs it as its script)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def mean_of_means() -> None:
    """A wrong all-reduce divisor: each process divides its loss by its own target tokens, so
    that DDP's average is the mean of the processes' means, not the mean over the tokens of
    the global batch (the bug ``Trainer.train_step``'s ``global_tokens`` fixed)."""
    from nmt.train.trainer import Trainer

    train_step = Trainer.train_step

    def own_tokens(self: Trainer, step_batches: Any, global_tokens: int = 0) -> Any:
        return train_step(self, step_batches, 0)

    Trainer.train_step = own_tokens  # type: ignore[method-assign]


BUGS: dict[str, Callable[[], None]] = {"mean_of_means": mean_of_means}

if __name__ == "__main__":
    BUGS[sys.argv.pop(1)]()
    from cli.main import app

    app()
