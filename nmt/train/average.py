"""Checkpoint averaging: the element-wise mean of the last N step checkpoints.

Averaging the weights of the last checkpoints of a run smooths the noise of the final updates
and usually gains some BLEU for free (Vaswani et al. 2017, §6.1; Popel & Bojar 2018, §4.10).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save as st_save

from nmt.data.vocab import copy_vocab
from nmt.errors import CheckpointError
from nmt.model import checkpoint as ckpt


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The step checkpoints of a run folder, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step-*.safetensors"))


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of safetensors weight files (accumulated in float64).

    Raises:
        CheckpointError: no files, or files whose tensor names or shapes differ.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = ckpt.load_weights(path)
        if total and (
            state.keys() != total.keys() or any(state[k].shape != total[k].shape for k in state)
        ):
            raise CheckpointError(f"{path}: tensor names or shapes differ from {paths[0]}")
        for name, tensor in state.items():
            total[name] = total.get(name, 0) + tensor.double()  # type: ignore[operator]
    first = ckpt.load_weights(paths[0])
    return {k: (v / len(paths)).to(first[k].dtype) for k, v in total.items()}


def average_run(
    run_dir: str | Path,
    last: int,
    out_dir: str | Path,
    allow_fewer: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Average the last ``last`` step checkpoints of ``run_dir`` into the model folder
    ``out_dir`` (config.json, the tokenizer files, model.safetensors), which ``nmt
    translate`` accepts.

    Args:
        allow_fewer: average all the step checkpoints there are when fewer than ``last``
            (a short run) instead of refusing.
        overwrite: replace the model in an ``out_dir`` that already holds one.

    Returns:
        The checkpoints that were averaged.

    Raises:
        CheckpointError: ``run_dir`` is not a run folder, or has fewer than ``last``
            checkpoints, or ``out_dir`` is ``run_dir`` itself, or holds a model already
            (without ``overwrite``).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = ckpt.read_config(run_dir)
    if last < 1:
        raise CheckpointError(f"--last {last}: average at least one checkpoint")
    paths = step_checkpoints(run_dir)
    if len(paths) < last and not (allow_fewer and paths):
        raise CheckpointError(
            f"{run_dir / 'checkpoints'}: {len(paths)} step checkpoint(s), cannot average the "
            f"last {last}; lower --last or keep more (keep_checkpoints)"
        )
    if out_dir.resolve() == run_dir.resolve():
        raise CheckpointError("the output folder must differ from the run folder")
    held = [n for n in (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE) if (out_dir / n).exists()]
    if held and not overwrite:
        raise CheckpointError(
            f"{out_dir} already holds {' and '.join(held)}: pass --overwrite to replace that "
            "model, or choose another -o"
        )
    paths = paths[-last:]
    blob = st_save(
        average_weights(paths),
        metadata={
            "format_version": str(ckpt.FORMAT_VERSION),
            "averaged": ",".join(p.name for p in paths),
        },
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_vocab(run_dir, out_dir)  # the SentencePiece model(s), another layout's removed
    ckpt.write_json(
        out_dir / ckpt.CONFIG_FILE, {**config, "averaged_from": [p.name for p in paths]}
    )
    ckpt.atomic_write(out_dir / ckpt.WEIGHTS_FILE, lambda f: f.write(blob))
    return paths
