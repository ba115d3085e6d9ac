"""Does training memory or start-up time grow with the corpus? ``nmt prepare`` and
``nmt train`` on Multi30k repeated 1×, 20× and 345× (29,000 × scale pairs; 345× ≈ 10M).

The first corpus is prepared with ``nmt prepare`` (training the SentencePiece model); the
larger ones reuse that model (``--spm``), so the model and batches have the same shapes.
Then ``nmt train --data`` runs ``--steps`` float32 updates of the ``small`` preset on each
(logging every update, no validation but the final one on 50 lines), sampled every 20 ms:

- start → first update: from launching the process to the first record in ``metrics.jsonl``
  (written right after update 1), imports, store opening and batch planning included;
- peak ``RssAnon`` (anonymous memory: the process's own) and peak ``RssFile`` (pages of the
  memory-mapped token files and libraries: page cache, shared, reclaimable) from
  ``/proc/PID/status``;
- the epoch boundary, measured in this process on the same data folder: the batch layout
  (sorting and cutting, once per run) and planning one epoch (what the background thread
  does while the previous epoch trains).

Prints a markdown table. The repeated corpora are written under ``--work`` (about 1.4 GB of
text and 0.5 GB of ids at 345×) and deleted at the end.

    python benchmarks/train_memory.py --data data/multi30k --scales 1,20,345 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from train_scaling import REPO, run_measured  # benchmarks/ is on sys.path as a script

from nmt.config import TrainConfig
from nmt.data.batching import EpochPlanner, epoch_seed
from nmt.data.parallel import corpus_path, iter_lines
from nmt.data.store import open_store


def repeat_corpus(src_prefix: Path, out_prefix: Path, scale: int) -> None:
    """Write ``out_prefix.{de,en}``: the corpus ``scale`` times over (plain text)."""
    for lang in ("de", "en"):
        text = "".join(line + "\n" for line in iter_lines(corpus_path(src_prefix, lang)))
        with open(f"{out_prefix}.{lang}", "w", encoding="utf-8") as f:
            for _ in range(scale):
                f.write(text)


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "cli", *map(str, args)]


@dataclass
class Sampled:
    """What :func:`run_sampled` saw of one process (MiB, seconds)."""

    status: int = 0
    first_update_s: float = float("nan")
    rss_anon: float = 0.0
    rss_file: float = 0.0
    vm_hwm: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def status_mib(pid: int) -> dict[str, float]:
    """``RssAnon``, ``RssFile`` and ``VmHWM`` of ``pid`` in MiB (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    wanted = {"RssAnon", "RssFile", "VmHWM"}
    return {k: int(v.split()[0]) / 1024 for k, v in fields if k in wanted}


def run_sampled(cmd: list[str], metrics: Path, interval: float = 0.02) -> Sampled:
    """Run ``cmd``, sampling its memory and watching ``metrics`` for the first update."""
    result = Sampled()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stderr is not None
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    while proc.poll() is None:
        now = status_mib(proc.pid)
        result.rss_anon = max(result.rss_anon, now.get("RssAnon", 0.0))
        result.rss_file = max(result.rss_file, now.get("RssFile", 0.0))
        result.vm_hwm = max(result.vm_hwm, now.get("VmHWM", 0.0))
        if result.first_update_s != result.first_update_s and metrics.is_file():  # NaN: not yet
            if any(json.loads(x).get("type") == "train" for x in metrics.read_text().splitlines()):
                result.first_update_s = time.monotonic() - start
        time.sleep(interval)
    reader.join()
    result.status, result.seconds = proc.returncode, time.monotonic() - start
    if proc.returncode:
        sys.stderr.write("".join(err)[-3000:])
    return result


def plan_times(prepared: Path, batch_tokens: int) -> tuple[float, float, int]:
    """Seconds to open the store and lay out its batches (once per run), seconds to plan
    one epoch (each epoch, in the background), and the number of batches."""
    start = time.perf_counter()
    data = open_store(prepared, TrainConfig.max_len)
    planner = EpochPlanner(data.src_lens, data.tgt_lens, batch_tokens, seed=1)
    layout_s = time.perf_counter() - start
    start = time.perf_counter()
    planner.layout.plan(epoch_seed(1, 2))
    return layout_s, time.perf_counter() - start, len(planner.layout)


def train_command(prepared: Path, work: Path, out: Path, steps: int) -> list[str]:
    (work / "log.toml").write_text("[train]\nlog_every = 1\n")
    return cli(
        "train", "--data", prepared, "--valid", work / "valid", "--output", out,
        "--preset", "small", "--max-steps", steps, "--eval-every", 1_000_000,
        "--save-every", 1_000_000, "--device", "cpu", "--dtype", "fp32",
        "--config", work / "log.toml",
    )  # fmt: skip


def measure(data: Path, work: Path, scale: int, steps: int) -> tuple:  # type: ignore[type-arg]
    """One row of the table for Multi30k × ``scale``."""
    prepared, spm = work / f"prepared-{scale}", work / "prepared-1" / "spm.model"
    prefix = data / "train"
    if scale > 1:
        prefix = work / f"big-{scale}"
        repeat_corpus(data / "train", prefix, scale)
    extra = ["--spm", spm] if scale > 1 else []
    start = time.monotonic()
    status, prep_rss = run_measured(
        cli("prepare", "--train", prefix, "--output", prepared, *extra), dict(os.environ)
    )
    prep_s = time.monotonic() - start
    assert status == 0, f"nmt prepare failed ({status})"
    if scale > 1:
        for lang in ("de", "en"):
            Path(f"{prefix}.{lang}").unlink()
    pairs = json.loads((prepared / "meta.json").read_text())["pairs"]
    out = work / f"run-{scale}"
    run = run_sampled(train_command(prepared, work, out, steps), out / "metrics.jsonl")
    assert run.status == 0, f"nmt train failed ({run.status})"
    layout_s, plan_s, n_batches = plan_times(prepared, TrainConfig.batch_tokens)
    return (scale, pairs, prep_s, prep_rss, run, layout_s, plan_s, n_batches)


def cpu_name() -> str:
    """The CPU's model name, family and model (from ``lscpu``)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    get = lambda key: info.get(key, "?").strip()  # noqa: E731
    return f"{get('Model name')} (family {get('CPU family')}, model {get('Model')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--scales", default="1,20,345", help="comma-separated; 1 must come first")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--work", type=Path, default=None, help="folder for the corpora")
    args = parser.parse_args()
    scales = [int(x) for x in args.scales.split(",")]
    assert scales[0] == 1, "the 1× corpus comes first: it trains the SentencePiece model"
    data = args.data.resolve()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp_name:
        work = Path(tmp_name)
        for lang in ("de", "en"):
            lines = list(iter_lines(corpus_path(data / "val", lang)))[:50]
            (work / f"valid.{lang}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        for scale in scales:
            rows.append(measure(data, work, scale, args.steps))
            print(f"# done: × {scale}", file=sys.stderr, flush=True)
    print(f"# {cpu_name()}, {os.cpu_count()} cores; small preset, float32, {args.steps} updates "
          f"of {TrainConfig.batch_tokens} tokens")  # fmt: skip
    print("| corpus | pairs | prepare (s) | prepare peak RSS (MiB) | start → first update (s) "
          "| batch layout, once (s) | plan an epoch (s) | batches per epoch "
          "| train peak RssAnon (MiB) | train peak RssFile (MiB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scale, pairs, prep_s, prep_rss, run, layout_s, plan_s, n_batches in rows:
        print(f"| Multi30k × {scale} | {pairs:,} | {prep_s:.0f} | {prep_rss:,.0f} | "
              f"{run.first_update_s:.1f} | {layout_s:.2f} | {plan_s:.2f} | {n_batches:,} | "
              f"{run.rss_anon:,.0f} | {run.rss_file:,.0f} |")  # fmt: skip
    base = rows[0][4].rss_anon
    for scale, *_, run, _, _, _ in rows[1:]:
        print(f"\n× {scale}: peak RssAnon {run.rss_anon - base:+,.0f} MiB over × 1")


if __name__ == "__main__":
    main()
