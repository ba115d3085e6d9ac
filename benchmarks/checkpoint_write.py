"""How long a stop's checkpoint writes take for ``big`` (32k joint vocabulary): ``resume.pt``
streamed into its temporary file (what :func:`nmt.model.checkpoint.save_resume` does), the
same built in a BytesIO first (how it was written before), and ``last.safetensors``.

A stop on SIGTERM must finish its writes before the job scheduler's SIGKILL (torchrun: 30 s
after SIGTERM). The model and a real AdamW state (both moments) are built on the CPU, no
training needed: one AdamW step on zero gradients fills the moments. Each write is atomic
(temporary file, flush, fsync, rename) into ``--out`` (default: a temporary folder, removed
at the end), so the times include the fsync to the disk. Prints a markdown table with the
file size, the seconds and the process's peak RSS after each write (``ru_maxrss``; the
BytesIO way runs last, so its growth is its own).

    python benchmarks/checkpoint_write.py --preset big --vocab 32000
"""

from __future__ import annotations

import argparse
import io
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nmt.config import ModelConfig, preset
from nmt.fileio import FORMAT_VERSION, atomic_write
from nmt.model import checkpoint as ckpt
from nmt.model.transformer import Transformer


def resume_state(model: Transformer) -> dict[str, Any]:
    """What :func:`nmt.train.resume.save_resume` puts into ``resume.pt``: the weights and a
    filled AdamW state (the RNG and counters are a few kilobytes and left out)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates exp_avg and exp_avg_sq for every parameter
    model.zero_grad(set_to_none=True)
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": {"step": 1},
    }


def through_bytesio(path: Path, state: dict[str, Any]) -> None:
    """The old way: the whole checkpoint serialised into memory, then written."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def timed(write: Callable[[], None], path: Path) -> tuple[float, int, float]:
    """Seconds of ``write()``, the size of ``path`` (bytes) and the peak RSS after (GiB)."""
    start = time.perf_counter()
    write()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    return seconds, path.stat().st_size, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="big")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--out", type=Path, default=None, help="folder to write into")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**preset(args.preset), "vocab_size": args.vocab}))
    state = resume_state(model)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(dir=args.out) as folder:
        out = Path(folder)
        rows = []
        path = out / ckpt.RESUME_FILE
        rows.append(("resume.pt, streamed", *timed(lambda: ckpt.save_resume(path, state), path)))
        path.unlink()
        path = out / "last.safetensors"
        rows.append(("last.safetensors", *timed(lambda: ckpt.save_weights(path, model), path)))
        path = out / ckpt.RESUME_FILE
        rows.append(("resume.pt via BytesIO", *timed(lambda: through_bytesio(path, state), path)))
    print(f"{args.preset}, vocab {args.vocab}: {params / 1e6:.0f}M parameters, float32; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}\n")  # fmt: skip
    print("| write | size (GB) | seconds | peak RSS after (GiB) |")
    print("|---|---:|---:|---:|")
    for name, seconds, size, peak in rows:
        print(f"| {name} | {size / 1e9:.2f} | {seconds:.1f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
