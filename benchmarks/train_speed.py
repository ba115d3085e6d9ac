"""Training throughput of ``nmt train`` on Multi30k: target tokens/s and steps/s per preset.

Times ``--steps`` updates (after ``--warmup`` untimed ones) of the real training step
(collate, forward, label-smoothed loss, backward, clip, AdamW) and prints a table with the
share of time spent building batches and the peak RSS.

    python benchmarks/train_speed.py --data data/multi30k --presets small --batch-tokens 2048
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import nmt.train.malloc
from nmt.config import ModelConfig, TrainConfig, preset
from nmt.config_file import from_dict
from nmt.data.parallel import collate, encode_parallel, read_parallel
from nmt.data.tokenizer import train_tokenizer
from nmt.model.onednn import TrainableOneDNNLinear
from nmt.train.run import Trainer


def measure(name: str, args: argparse.Namespace, tokenizer, data, dtype: str, onednn: bool) -> str:  # type: ignore[no-untyped-def]
    model_cfg = replace(from_dict(ModelConfig, preset(name)), vocab_size=tokenizer.vocab_size)
    train_cfg = TrainConfig(
        batch_tokens=args.batch_tokens, dtype=dtype, device=args.device, onednn=onednn
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(Path(tmp), model_cfg, train_cfg, tokenizer, data, data, ([], []))
        steps = list(trainer.epoch_steps(1))  # each: [batch] (accum = 1)
        for step in steps[: args.warmup]:
            trainer.train_step(trainer.collate_step(step))
        tokens, collate_s = 0, 0.0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for step in steps[args.warmup : args.warmup + args.steps]:
            t0 = time.perf_counter()
            collate(data, step[0])  # timed apart: the step below collates the same batch again
            collate_s += time.perf_counter() - t0
            tokens += trainer.train_step(trainer.collate_step(step))[3]  # type: ignore[index]
        seconds = time.perf_counter() - start - collate_s
        after = resource.getrusage(resource.RUSAGE_SELF)
    system_s, faults = after.ru_stime - usage.ru_stime, after.ru_minflt - usage.ru_minflt
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    amp = trainer.amp_dtype or torch.float32
    return (
        f"| {name} | {str(amp).replace('torch.', '')} | {kernels(trainer)} | {args.batch_tokens} | "
        f"{tokens / seconds:,.0f} | {args.steps / seconds:.2f} | "
        f"{100 * collate_s / (seconds + collate_s):.1f}% | {system_s:.1f} | {faults:,} | "
        f"{rss:,.0f} |"
    )


def cpu_model() -> str:
    """The CPU as ``lscpu`` names it: model name, family and model (25/1 = Zen 3, 25/17 =
    Zen 4 on AMD), and whether its flags include AVX-512 and AVX512-BF16."""
    try:
        info = dict(
            (k.strip(), v.strip())
            for k, _, v in (
                line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()
            )
            if k.strip() in ("model name", "cpu family", "model", "flags")
        )
    except OSError:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    return (
        f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model "
        f"{info.get('model', '?')}; avx512f {'yes' if 'avx512f' in flags else 'no'}, "
        f"avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'})"
    )


def kernels(trainer: Trainer) -> str:
    """Which code computes the linear layers: oneDNN's float32 products or torch's default."""
    if any(isinstance(m, TrainableOneDNNLinear) for m in trainer.model.modules()):
        return "oneDNN"
    return "torch (bf16: oneDNN)" if trainer.amp_dtype else "torch (MKL)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/multi30k"))
    parser.add_argument("--presets", default="small")
    parser.add_argument("--dtypes", default="auto")
    parser.add_argument("--batch-tokens", type=int, default=TrainConfig.batch_tokens)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--onednn", default="true", help="comma-separated: true (oneDNN products), false (MKL)"
    )
    args = parser.parse_args()
    tuned = (
        nmt.train.malloc.tune()
    )  # as nmt.train.run.train does first (this script builds a Trainer)
    src, tgt = read_parallel(args.data / "train", "de", "en")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(src + tgt, Path(tmp) / "spm.model", args.vocab_size)
    data = encode_parallel(tokenizer, src, tgt, 200)
    print(
        f"# {cpu_model()}; ISA: torch {torch.backends.cpu.get_cpu_capability()}, oneDNN cap "
        f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}; {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, device {args.device}, {args.steps} timed steps; malloc "
        f"tuning {'on' if tuned else 'off'}"
    )
    print(
        "| preset | dtype | linear kernels | batch tokens | target tokens/s | steps/s "
        "| batching share | system CPU (s) | minor faults | peak RSS (MiB) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.presets.split(","):
        for dtype in args.dtypes.split(","):
            for onednn in args.onednn.split(","):
                row = measure(name, args, tokenizer, data, dtype, onednn == "true")
                print(row, flush=True)


if __name__ == "__main__":
    main()
