"""Training speed of ``nmt train`` against OpenNMT-py 3.5.1 on the same CPU, side by side.

Issue 10: the ``small`` model must train at >= 1.5x OpenNMT-py's target tokens/s on the same
AVX2 CPU. Both tools train the same model on Multi30k de→en, one after the other and never
at once (``--rounds 2``: nmt, OpenNMT-py, nmt, OpenNMT-py), for ``--minutes`` each:

- the ``small`` shape (3+3 layers, d_model 256, 4 heads, ffn 1024, pre-norm, ReLU, biases on
  every projection), one joint SentencePiece vocabulary of 8,000 pieces tied across source,
  target and output (OpenNMT-py: share_vocab, share_embeddings, share_decoder_embeddings),
  dropout and label smoothing 0.1, Adam β 0.9/0.98, 500 warm-up steps to lr 1e-3 (noam with
  that peak for OpenNMT-py), clipping at 1.0, float32, the same thread count;
- the same tokens: ``nmt prepare`` learns the SentencePiece model and encodes the corpus once;
  OpenNMT-py reads those very pairs as space-separated pieces (no on-the-fly transform, so
  neither tool tokenizes while it trains) with the same 8,000 pieces as its vocabulary;
- the same batches: nmt counts ``sentences × max(src_len + 1, tgt_len + 1)`` per batch,
  OpenNMT-py ``sentences × max(src_len, tgt_len + 2)``. OpenNMT-py's ``batch_size`` is set so
  that an epoch holds as many batches as nmt's at ``--batch-tokens`` (found by replaying its
  batching rule on the same lengths), i.e. the same target tokens per update; both sort a
  whole epoch by length (OpenNMT-py: ``bucket_size`` = the corpus) and shuffle the batches;
- no validation and no checkpoint inside the timed window (nmt validates 50 lines once,
  after it; OpenNMT-py is stopped with SIGTERM ``--minutes`` after its first report).

Throughput is measured the same way for both, from each tool's own log: every ``--window``
updates both report the non-padding target tokens (EOS included, BOS not) divided by the wall
time of those updates (nmt: ``tgt_tokens_per_s`` in ``metrics.jsonl``; OpenNMT-py: the second
``tok/s`` number). The first ``--skip-windows`` windows (start-up, data loading) are left out
and the table shows the median of the rest. It also shows the share of the machine's CPU
time that other processes used during each run: with as many threads as cores, a neighbour
that takes one core slows both tools several-fold (each parallel region waits for the
descheduled thread), so only rows near 0% are worth comparing; each run waits up to
``--wait-idle`` seconds for other processes to leave the CPU idle first.

OpenNMT-py is optional and needed by nothing else; it installs beside torch 2.13 with

    .venv/bin/pip install --no-deps opennmt-py==3.5.1
    .venv/bin/pip install configargparse 'pyonmttok>=1.37,<2' six rapidfuzz pyahocorasick \\
        fasttext-wheel spacy

(``onmt_train`` imports every transform module, hence spacy, fasttext, rapidfuzz and
pyahocorasick). Neither tool runs with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``: OpenNMT-py reads
its vocabulary from a text file here and resumes from no checkpoint, so it never needs to
unpickle arbitrary objects. Then

    python benchmarks/train_vs_opennmt.py --minutes 4 --rounds 2 --isa avx2

``--isa avx2`` caps oneDNN, ATen, CTranslate2 and MKL at AVX2 in both runs, to stand in for an
AVX2-only CPU such as Zen 3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from nmt.config import ModelConfig, TrainConfig, preset
from nmt.config_file import from_dict
from nmt.data.batching import make_batches
from nmt.data.parallel import corpus_path, read_lines
from nmt.data.store import open_store

REPO = Path(__file__).resolve().parent.parent
AVX2_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "CT2_FORCE_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
# Runs a module as ``python -m`` would, after printing the CPU kernels ATen picked here.
PROBE = (
    "import runpy, sys, torch; "
    "print('cpu capability:', torch.backends.cpu.get_cpu_capability(), file=sys.stderr, "
    "flush=True); sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], "
    "run_name='__main__', alter_sys=True)"
)
# OpenNMT-py's report: "Step 20/...; ...; bsz: SRC/TGT/SENTS; SRC/TGT tok/s; ..." (per window)
ONMT_STEP = re.compile(r"Step .*bsz: *\d+/ *(\d+)/ *\d+; *\d+/ *(\d+) tok/s")


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and flags, as lscpu reports them."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return fields.get("Model name", "?").strip(), set(fields.get("Flags", "").split())


def child_env(args: argparse.Namespace, nproc: int = 1) -> dict[str, str]:
    """The environment of a tool's run: thread count (per process), ISA caps; torch.load keeps
    its safe ``weights_only=True`` default even if the caller's environment turned it off."""
    threads = str(max(1, args.threads // nproc))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    for name in AVX2_ENV:
        env.pop(name, None)
    if args.isa == "avx2":
        env.update(AVX2_ENV)
    return env


def prepare(data: Path, work: Path) -> Path:
    """Multi30k encoded once by ``nmt prepare`` (which learns the SentencePiece model), and a
    50-line validation set for nmt's one validation after the timed window."""
    prepared = work / "prepared"
    if not (prepared / "meta.json").exists():
        cmd = ["cli", "prepare", "--train", str(data / "train"), "--output", str(prepared)]
        done = subprocess.run([sys.executable, "-m", *cmd, "--overwrite"], cwd=REPO,
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            sys.exit(f"nmt prepare failed:\n{done.stderr[-3000:]}")
    for lang in ("de", "en"):
        lines = read_lines(corpus_path(data / "val", lang))[:50]
        (work / f"valid.{lang}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return prepared


def write_onmt_corpus(prepared: Path, out: Path) -> tuple[list[int], list[int]]:
    """The prepared pairs as space-separated pieces for OpenNMT-py, and its vocabulary file:
    the SentencePiece pieces less pad/unk/bos/eos, for which it adds its own four specials
    (8,000 in all). Returns the source and target lengths (pieces, no BOS/EOS)."""
    out.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(prepared / "spm.model"))
    pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize())]
    (out / "vocab.txt").write_text("".join(p + "\n" for p in pieces[4:]), encoding="utf-8")
    store = open_store(prepared, TrainConfig.max_len)
    src_lens, tgt_lens = store.src_lens.tolist(), store.tgt_lens.tolist()
    with (
        open(out / "train.de", "w", encoding="utf-8") as fs,
        open(out / "train.en", "w", encoding="utf-8") as ft,
    ):
        for i in range(len(store)):
            src, tgt = store.pair(i)
            fs.write(" ".join(pieces[t] for t in src.tolist()) + "\n")
            ft.write(" ".join(pieces[t] for t in tgt.tolist()) + "\n")
    return src_lens, tgt_lens


def onmt_batch_count(src_lens: list[int], tgt_lens: list[int], batch_size: int) -> int:
    """Batches in one epoch under OpenNMT-py 3.5's token batching (``batch_iter``): examples
    sorted by (src, tgt) length, a batch closed when sentences × max(src_len, tgt_len + 2)
    reaches ``batch_size``, the sentence that overflows it starting the next batch."""
    count, n, longest = 0, 0, 0
    for s, t in sorted(zip(src_lens, tgt_lens)):
        length = max(s, t + 2)  # its target ids hold BOS and EOS, its source ids neither
        if n and (n + 1) * max(longest, length) > batch_size:
            count, n, longest = count + 1, 0, 0
        n, longest = n + 1, max(longest, length)
    return count + (n > 0)


def match_batches(src_lens: list[int], tgt_lens: list[int], batch_tokens: int) -> tuple[int, float]:
    """OpenNMT-py's ``batch_size`` whose epoch has as many batches as nmt's at
    ``batch_tokens``, and the mean target tokens (EOS included) per nmt batch."""
    nmt_count = len(make_batches(src_lens, tgt_lens, batch_tokens, seed=1))
    low, high = batch_tokens // 2, batch_tokens * 2
    while low < high:  # the smallest batch_size with at most nmt's batch count
        mid = (low + high) // 2
        if onmt_batch_count(src_lens, tgt_lens, mid) <= nmt_count:
            high = mid
        else:
            low = mid + 1
    return low, (sum(tgt_lens) + len(tgt_lens)) / nmt_count


def onmt_config(
    args: argparse.Namespace, corpus: Path, run: Path, batch_size: int, n_pairs: int
) -> Path:
    """OpenNMT-py's YAML config (JSON values are YAML) for the same model and recipe."""
    m, t = from_dict(ModelConfig, preset("small")), TrainConfig()
    noam_lr = t.lr * (m.d_model * t.warmup_steps) ** 0.5  # noam's peak = nmt's peak lr
    # fmt: off
    config = {
        "data": {"corpus_1": {"path_src": str(corpus / "train.de"),
                              "path_tgt": str(corpus / "train.en")}},
        "src_vocab": str(corpus / "vocab.txt"), "share_vocab": True,
        "src_vocab_size": m.vocab_size, "tgt_vocab_size": m.vocab_size,
        "save_model": str(run / "model"), "save_checkpoint_steps": 10**7,
        "train_steps": 10**7, "valid_steps": 10**7, "report_every": args.window, "seed": t.seed,
        "encoder_type": "transformer", "decoder_type": "transformer",
        "enc_layers": m.n_encoder_layers, "dec_layers": m.n_decoder_layers,
        "hidden_size": m.d_model, "word_vec_size": m.d_model, "heads": m.n_heads,
        "transformer_ff": m.ffn_dim, "position_encoding": True,
        "add_qkvbias": True, "add_ffnbias": True,  # nmt's projections all have biases
        "share_embeddings": True, "share_decoder_embeddings": True,
        "dropout": [m.dropout], "attention_dropout": [m.attention_dropout],
        "label_smoothing": t.label_smoothing, "model_dtype": "fp32",
        "optim": "adam", "adam_beta1": t.adam_betas[0], "adam_beta2": t.adam_betas[1],
        "decay_method": "noam", "learning_rate": noam_lr, "warmup_steps": t.warmup_steps,
        "max_grad_norm": t.clip_norm, "param_init": 0.0, "param_init_glorot": True,
        "batch_type": "tokens", "batch_size": batch_size, "normalization": "tokens",
        "accum_count": [1],
        "bucket_size": n_pairs,  # one epoch per bucket, sorted by length as nmt does
        "num_workers": args.onmt_workers,
    }
    # fmt: on
    path = run / "config.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    return path


@dataclass
class Result:
    """One run: window throughputs (target tokens/s), the CPU capability ATen chose in it,
    the mean target tokens per update, and the share of the machine's CPU time that other
    processes used while it ran."""

    rates: list[float]
    capability: str
    tgt_per_update: float
    others: float


def cpu_seconds(pgid: int | None = None) -> float:
    """CPU seconds used since boot by the whole machine (``/proc/stat``, busy time), or by the
    processes of process group ``pgid`` (their ``/proc/PID/stat``, reaped children included)."""
    if pgid is None:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:8]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def others_share(start: tuple[float, float], ours: float) -> float:
    """Share of the machine's CPU time that other processes used since ``start`` (monotonic
    time, :func:`cpu_seconds`), when this run used ``ours`` CPU seconds."""
    wall = (time.monotonic() - start[0]) * (os.cpu_count() or 1)
    return max(0.0, cpu_seconds() - start[1] - ours) / max(wall, 1e-9)


def wait_idle(max_wait_s: float) -> None:
    """Wait, at most ``max_wait_s``, until other processes use under 10% of the CPU for 5 s."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        start = time.monotonic(), cpu_seconds()
        time.sleep(5)
        if others_share(start, 0.0) < 0.1:
            return


def launch(
    cmd: list[str],
    args: argparse.Namespace,
    cwd: Path,
    out: Any,
    nproc: int = 1,
) -> tuple[subprocess.Popen[str], tuple[float, float]]:
    """Start a tool's run, once the CPU is idle, in its own process group (so that it can be
    stopped, and its CPU time counted, as a whole), its stdout and stderr going to ``out``.
    Returns the process and the start for :func:`others_share`."""
    wait_idle(args.wait_idle)
    start = time.monotonic(), cpu_seconds()
    env = child_env(args, nproc)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    return proc, start


@contextmanager
def stopped_on_exit(proc: subprocess.Popen[str]) -> Iterator[None]:
    """Stop ``proc``'s process group should this script stop (an error, Ctrl-C, SIGTERM)
    before ``proc`` has been waited for; a reaped leader's group id may belong to others."""
    try:
        yield
    finally:
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)


def run_nmt(args: argparse.Namespace, prepared: Path, run: Path) -> Result:
    """One ``nmt train`` run of ``--minutes`` of training (its own ``--max-minutes``)."""
    (run.parent / "nmt.toml").write_text(f"[train]\nlog_every = {args.window}\n")
    # fmt: off
    launcher = ["cli"]
    if args.nproc > 1:  # torchrun, each process with its share of the batch and the threads
        launcher = ["torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(args.nproc), "-m", "cli"]
    cmd = [sys.executable, "-c", PROBE, *launcher, "train", "--data", str(prepared),
           "--valid", str(prepared.parent / "valid"), "--output", str(run), "--preset", "small",
           "--dtype", "fp32", "--device", "cpu", "--max-minutes", str(args.minutes),
           "--batch-tokens", str(args.batch_tokens // args.nproc), "--eval-every", str(10**7),
           "--save-every", str(10**7), "--config", str(run.parent / "nmt.toml")]
    # fmt: on
    log = run.with_suffix(".log")
    with open(log, "w") as f:
        proc, start = launch(cmd, args, REPO, f, nproc=args.nproc)
        with stopped_on_exit(proc):
            _, status, usage = os.wait4(proc.pid, 0)  # usage: its threads' CPU time
            proc.returncode = status = os.waitstatus_to_exitcode(status)
    others = others_share(start, usage.ru_utime + usage.ru_stime)
    if status != 0:
        sys.exit(f"nmt train failed ({status}); see {log}")
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    rates = [r["tgt_tokens_per_s"] for r in records if r["type"] == "train"]
    return Result(rates, capability(log.read_text()), 0.0, others)


def run_onmt(args: argparse.Namespace, config: Path, run: Path) -> Result:
    """One OpenNMT-py run, stopped (SIGTERM to its process group, data loader included) at
    its first report ``--minutes`` after its first one."""
    cmd = [sys.executable, "-c", PROBE, "onmt.bin.train", "-config", str(config)]
    proc, start = launch(cmd, args, run, subprocess.PIPE)
    with stopped_on_exit(proc):
        rates, tgt_sizes, lines, others = watch_onmt(args, proc, start)
    text = "".join(lines) + (proc.stdout.read() if proc.stdout else "")
    run.with_suffix(".log").write_text(text)
    if not rates:
        sys.exit(f"OpenNMT-py reported no training step; see {run.with_suffix('.log')}")
    steady = tgt_sizes[args.skip_windows :] or tgt_sizes
    return Result(rates, capability(text), statistics.mean(steady), others)


def watch_onmt(
    args: argparse.Namespace, proc: subprocess.Popen[str], start: tuple[float, float]
) -> tuple[list[float], list[int], list[str], float]:
    """Read OpenNMT-py's output until ``--minutes`` after its first report, then stop it.
    Returns the window throughputs, target tokens per update and output lines so far, and
    :func:`others_share` at the stop."""
    assert proc.stdout is not None
    others = math.nan

    def stop() -> None:
        os.killpg(proc.pid, signal.SIGTERM)

    guard = threading.Timer(args.minutes * 60 + 600, stop)  # a hung run
    guard.daemon = True
    guard.start()
    rates, tgt_sizes, lines, first = [], [], [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if match := ONMT_STEP.search(line):
                first = first or time.monotonic()
                tgt_sizes.append(int(match[1]))
                rates.append(float(match[2]))
                if time.monotonic() - first >= args.minutes * 60:
                    others = others_share(start, cpu_seconds(proc.pid))  # pgid = its pid
                    stop()
                    break
    finally:
        guard.cancel()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return rates, tgt_sizes, lines, others


def capability(log: str) -> str:
    found = re.search(r"cpu capability: (\S+)", log)
    return found[1] if found else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = REPO.parent / "shared" / "data" / "multi30k"
    default_data = REPO / "data" / "multi30k"
    parser.add_argument(
        "--data", type=Path, default=default_data if default_data.is_dir() else shared
    )
    parser.add_argument("--minutes", type=float, default=4.0, help="training time per run")
    parser.add_argument("--rounds", type=int, default=2, help="nmt then OpenNMT-py, N times")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="nmt processes (torchrun DDP; each takes --batch-tokens/N tokens and "
        "--threads/N threads, so an update holds as many tokens as with one)",
    )
    parser.add_argument("--window", type=int, default=10, help="updates per logged window")
    parser.add_argument("--skip-windows", type=int, default=2, help="warm-up windows left out")
    parser.add_argument(
        "--wait-idle", type=float, default=300, help="seconds to wait for an idle CPU per run"
    )
    parser.add_argument(
        "--onmt-workers",
        type=int,
        default=1,
        help="OpenNMT-py data loader processes (nmt uses one thread)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that runs are stopped too
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        benchmark(args, work)


def benchmark(args: argparse.Namespace, work: Path) -> None:
    """Prepare once, run the rounds, print the table."""
    prepared = prepare(args.data.resolve(), work)
    lens = write_onmt_corpus(prepared, work / "onmt-data")
    onmt_batch, nmt_tgt_per_update = match_batches(*lens, args.batch_tokens)
    if args.nproc > 1:  # an update holds one batch of --batch-tokens/N per process
        nmt_tgt_per_update = args.nproc * match_batches(*lens, args.batch_tokens // args.nproc)[1]
    print_header(args, onmt_batch, nmt_tgt_per_update)
    ratios, others = [], []
    for r in range(1, args.rounds + 1):
        run = work / "runs" / f"{args.isa}-r{r}"
        for old in (run / "nmt", run / "onmt"):
            shutil.rmtree(old, ignore_errors=True)
        (run / "onmt").mkdir(parents=True)
        nmt = run_nmt(args, prepared, run / "nmt")
        nmt.tgt_per_update = nmt_tgt_per_update
        print_row(r, "nmt", nmt, args.skip_windows, "")
        config = onmt_config(args, work / "onmt-data", run / "onmt", onmt_batch, len(lens[0]))
        onmt = run_onmt(args, config, run / "onmt")
        ratios.append(
            steady_median(nmt.rates, args.skip_windows)
            / steady_median(onmt.rates, args.skip_windows)
        )
        print_row(r, "OpenNMT-py", onmt, args.skip_windows, f"{ratios[-1]:.2f}")
        others += [nmt.others, onmt.others]
    print(f"# nmt / OpenNMT-py by round: {', '.join(f'{x:.2f}' for x in ratios)}")
    if max(others) > 0.1:
        print(f"# WARNING: other processes took up to {100 * max(others):.0f}% of the CPU "
              "during a run; threads that wait for a descheduled one slow both tools badly, "
              "so rerun on an idle machine")  # fmt: skip
    print(
        f"# reproduce: python benchmarks/train_vs_opennmt.py --data {args.data} "
        f"--minutes {args.minutes:g} --rounds {args.rounds} --isa {args.isa} "
        f"--batch-tokens {args.batch_tokens} --threads {args.threads} --nproc {args.nproc} "
        f"--window {args.window} "
        f"--skip-windows {args.skip_windows} --onmt-workers {args.onmt_workers} "
        f"--wait-idle {args.wait_idle:g}"
    )


def print_header(args: argparse.Namespace, onmt_batch: int, nmt_tgt_per_update: float) -> None:
    """The CPU, ISA profile, recipe and batch matching, as comment lines above the table."""
    model, flags = cpu_info()
    has = ", ".join(
        f"{f} {'yes' if f in flags else 'no'}"
        for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    )
    caps = " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()) if args.isa == "avx2" else "none"
    print(
        f"# CPU: {model} ({has}); threads {args.threads}, nmt in {args.nproc} process(es); "
        f"torch {torch.__version__}, "
        f"OpenNMT-py {version('OpenNMT-py')}"
    )
    print(
        f"# ISA profile: {args.isa} (caps: {caps}); dtype fp32; small preset, "
        f"{args.minutes:g} min per run; median of {args.window}-update windows, first "
        f"{args.skip_windows} left out"
    )
    print(
        f"# batches: nmt --batch-tokens {args.batch_tokens} = OpenNMT-py batch_size "
        f"{onmt_batch}: as many batches per epoch, {nmt_tgt_per_update:,.0f} target tokens per "
        "update (tgt tokens/update: nmt's epoch mean, OpenNMT-py's logged mean)"
    )
    print(
        "| round | tool | cpu capability | target tokens/s | windows (min–max) "
        "| tgt tokens/update | others' CPU | nmt / OpenNMT-py |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|")


def steady_median(rates: list[float], skip: int) -> float:
    """The median of a run's window throughputs after the first ``skip`` windows (NaN when
    there are none: the run was too short or too slow)."""
    return statistics.median(rates[skip:]) if len(rates) > skip else math.nan


def print_row(r: int, tool: str, result: Result, skip: int, ratio: str) -> None:
    """Print one run's row."""
    steady = result.rates[skip:] or [math.nan]
    print(
        f"| {r} | {tool} | {result.capability} | {steady_median(result.rates, skip):,.0f} "
        f"| {len(result.rates[skip:])} ({min(steady):,.0f}–{max(steady):,.0f}) "
        f"| {result.tgt_per_update:,.0f} | {100 * result.others:.0f}% | {ratio} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
