"""Training throughput of ``nmt train`` by preset, number of processes and ``--compile``.

Prepares Multi30k once (``nmt prepare``), then runs the real command for each combination —
one process, or ``torchrun --nproc_per_node 2`` with gloo — for ``--steps`` updates, and
reads ``metrics.jsonl``: target tokens/s summed over processes (the mean of the logged
windows after the first, which holds start-up and compiling), the share of the step spent
waiting for batches, and the peak RSS of the largest process. Validation runs on 50 lines
only, once, at the end.

    python benchmarks/train_scaling.py --data data/multi30k --presets small,base \\
        --procs 1,2 --compile off,on --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run ``cmd``; its exit status and peak RSS in MiB (its largest process, descendants
    included: ``wait4`` reports the maximum over the waited-for tree)."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(err[-3000:])
    return proc.returncode, usage.ru_maxrss / 1024


def window_means(metrics: Path) -> tuple[float, float]:
    """Mean target tokens/s and data-wait share of a run's logged training windows, the
    first (start-up, compiling) left out."""
    records = [json.loads(line) for line in metrics.open()]
    windows = [r for r in records if r["type"] == "train"][1:]
    n = len(windows)
    return (
        sum(r["tgt_tokens_per_s"] for r in windows) / n,
        sum(r["data_wait_share"] for r in windows) / n,
    )


def train_command(procs: int, data: Path, valid: Path, out: Path, preset: str, args) -> list[str]:  # type: ignore[no-untyped-def]
    """The ``nmt train`` command line (under torchrun for more than one process)."""
    launcher = [sys.executable, "-m", "cli"]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(procs), "-m", "cli"]  # fmt: skip
    return [
        *launcher, "train", "--data", str(data), "--valid", str(valid), "--output", str(out),
        "--preset", preset, "--max-steps", str(args.steps), "--eval-every", "1000000",
        "--save-every", "1000000", "--batch-tokens", str(args.batch_tokens),
        "--device", "cpu", "--dtype", args.dtype, "--config", str(out.parent / "log.toml"),
    ]  # fmt: skip


def measure(preset: str, procs: int, compiled: bool, data: Path, valid: Path, args) -> str:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        (Path(tmp) / "log.toml").write_text(f"[train]\nlog_every = {args.log_every}\n")
        cmd = train_command(procs, data, valid, out, preset, args)
        if compiled:
            cmd.append("--compile")
        env = dict(os.environ)
        if procs > 1:  # split the cores between the processes
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))
        start = time.monotonic()
        status, rss = run_measured(cmd, env)
        wall = time.monotonic() - start
        if status != 0:
            return f"| {preset} | {procs} | {'on' if compiled else 'off'} | failed ({status}) |"
        tok_s, wait = window_means(out / "metrics.jsonl")
    return (
        f"| {preset} | {procs} | {'on' if compiled else 'off'} | {tok_s:,.0f} | "
        f"{100 * wait:.2f}% | {rss:,.0f} | {wall:.0f} |"
    )


def prepare(data_dir: Path, tmp: Path) -> tuple[Path, Path]:
    """Multi30k train prepared once, and a 50-line validation set."""
    prepared = tmp / "prepared"
    subprocess.run([sys.executable, "-m", "cli", "prepare", "--train", str(data_dir / "train"),
                    "--output", str(prepared)], check=True, cwd=REPO)  # fmt: skip
    from nmt.data.parallel import corpus_path, read_lines

    for lang in ("de", "en"):
        lines = read_lines(corpus_path(data_dir / "val", lang))[:50]
        (tmp / f"valid.{lang}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return prepared, tmp / "valid"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--presets", default="small,base")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--compile", default="off,on")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.steps} updates of {args.batch_tokens} tokens, dtype {args.dtype}")  # fmt: skip
    print("| preset | processes | --compile | target tokens/s | waiting for data "
          "| peak RSS/process (MiB) | wall (s) |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        data, valid = prepare(args.data.resolve(), Path(tmp))
        for preset in args.presets.split(","):
            for procs in map(int, args.procs.split(",")):
                for mode in args.compile.split(","):
                    row = measure(preset, procs, mode == "on", data, valid, args)
                    print(row, flush=True)


if __name__ == "__main__":
    main()
