"""The Python half of ``benchmarks/gpu_check.sh``: the device, and the markdown report with
the training speed and model FLOPs utilisation (MFU) of a run.

    python3 benchmarks/gpu_check.py device DIR       # exits 2 when there is no CUDA device
    python3 benchmarks/gpu_check.py report DIR RUN   # DIR/gpu_check.md, printed too

``device`` writes ``DIR/device.json``; ``report`` joins it with the shell script's
``DIR/steps.tsv`` (each step's exit status, seconds and time limit), pytest's
``DIR/cuda_tests.xml``, ``benchmarks/sdpa_kernels.py``'s ``DIR/sdpa.json`` and the training
run folder ``RUN`` into one table. torch is imported only where it is needed, so that a
machine without it gets a one-line message.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import sdpa_kernels  # benchmarks/ is on sys.path when run as a script

NO_CUDA = 2  # exit status of `device` without a usable CUDA device

# Peak dense (without sparsity) bf16 tensor-core throughput in TFLOP/s, from NVIDIA's
# datasheets, keyed by a part of torch.cuda.get_device_name(); the first match counts, so
# the more specific names come first. None: no figure here (the report says n/a).
PEAK_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", None),
    ("H100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", None),
    ("H200", 989.0),  # H200 SXM and GH200: the H100 SXM's tensor cores
    ("B200", 2250.0),
    ("A100", 312.0),  # SXM4 and PCIe
    ("A10G", None),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),  # with float32 accumulation, as torch's bf16 products
    ("V100", None),  # no bf16 tensor cores
    ("T4", None),  # no bf16 tensor cores
)
FORMULA = (
    "MFU = model FLOPs / (wall time × peak dense bf16 FLOP/s); model FLOPs = 6 × (N_src × "
    "source tokens + N_tgt × target tokens) + 12 × d_model × Σ(L_enc·S² + L_dec·(T² + T·S)); "
    "N_src = encoder parameters + the decoder's cross-attention K/V projections (they read "
    "the encoder output), N_tgt = the other decoder parameters + the output projection (the "
    "tied embedding); S, T = a sentence's source and target positions (EOS/BOS counted, "
    "padding not); per target token from the training corpus's averages"
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The device's peak dense bf16 TFLOP/s from :data:`PEAK_BF16_TFLOPS`; None if unknown."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def attention_flops(
    d_model: int, n_encoder_layers: int, n_decoder_layers: int, src_lens: Any, tgt_lens: Any
) -> float:
    """Training FLOPs of the attention products QKᵀ and AV, summed over sentences.

    Forward, each layer: 2 FLOPs per multiply-add × 2 products × ``q_len × k_len × d_model``;
    backward twice that, so ``12 × d_model × (L_enc·S² + L_dec·(T² + T·S))`` per sentence
    (encoder self-, decoder self- and cross-attention). Masked positions (the causal half)
    count, as in Chowdhery et al. 2022 (PaLM), appendix B.

    Args:
        src_lens / tgt_lens: ``(sentences,)`` source and target positions (EOS/BOS counted).
    """
    s, t = np.asarray(src_lens, dtype=np.float64), np.asarray(tgt_lens, dtype=np.float64)
    per_sentence = n_encoder_layers * s**2 + n_decoder_layers * (t**2 + t * s)
    return 12.0 * d_model * float(per_sentence.sum())


def training_flops(
    src_params: int, tgt_params: int, src_tokens: float, tgt_tokens: float, attention: float
) -> float:
    """Model FLOPs of training on the given tokens: ``6 × (N_src × source tokens + N_tgt ×
    target tokens) + attention`` (2 FLOPs per parameter and token forward, 4 backward;
    Kaplan et al. 2020, §2.1)."""
    return 6.0 * (src_params * src_tokens + tgt_params * tgt_tokens) + attention


def mfu(flops_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None when the peak is unknown)."""
    return None if not peak_tflops else flops_per_s / (peak_tflops * 1e12)


def param_split(model_cfg: Any) -> tuple[int, int]:
    """``(N_src, N_tgt)`` of :data:`FORMULA` for a ``ModelConfig``: parameters multiplied
    with every source token, and with every target token (an embedding lookup multiplies
    nothing, so the tied embedding counts once, as the output projection)."""
    import torch

    from nmt.model.transformer import Transformer

    with torch.device("meta"):  # shapes only, no memory
        model = Transformer(model_cfg)
    count: dict[str, int] = {"enc": 0, "dec": 0, "kv": 0}
    for name, p in model.named_parameters():
        if name.startswith(("encoder_layers.", "encoder_norm.")):
            count["enc"] += p.numel()
        elif name.startswith(("decoder_layers.", "decoder_norm.")):
            count["kv" if ".cross_attn.kv_proj." in name else "dec"] += p.numel()
    return count["enc"] + count["kv"], count["dec"] + model.embed.weight.numel()


def flops_per_target_token(model_cfg: Any, src_lens: Any, tgt_lens: Any) -> tuple[float, float]:
    """Training FLOPs per target token on a corpus of these sentence lengths (tokens without
    EOS/BOS), and the attention products' share of them."""
    s = np.asarray(src_lens, dtype=np.float64) + 1  # + EOS
    t = np.asarray(tgt_lens, dtype=np.float64) + 1  # BOS + target in, target + EOS out
    n_src, n_tgt = param_split(model_cfg)
    c = model_cfg
    attention = attention_flops(c.d_model, c.n_encoder_layers, c.n_decoder_layers, s, t)
    total = training_flops(n_src, n_tgt, s.sum(), t.sum(), attention)
    return total / t.sum(), attention / total


# --- the device ---------------------------------------------------------------------------
def device_info() -> tuple[dict[str, Any] | None, str]:
    """What the device step records, or None and why there is nothing to check."""
    try:
        import torch
    except ImportError as exc:
        return None, f"{sys.executable} cannot import torch ({exc})"
    if not torch.cuda.is_available():
        return None, (
            f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"CUDA runtime {torch.version.cuda or 'none'})"
        )
    name = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "device": name,
        "capability": "sm_{}{}".format(*torch.cuda.get_device_capability(0)),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False),
        "peak_bf16_tflops": peak_bf16_tflops(name),
        "nccl": torch.distributed.is_available() and torch.distributed.is_nccl_available(),
    }
    for module in ("pytest", "ctranslate2"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # not installed, or a wheel that does not load here
            info[module] = None
    if info["ctranslate2"]:
        try:
            info["ctranslate2_cuda_devices"] = __import__("ctranslate2").get_cuda_device_count()
        except Exception as exc:
            info["ctranslate2_cuda_devices"] = f"error: {exc}"
    return info, ""


def device_step(out: Path) -> int:
    info, why = device_info()
    if info is None:
        print(f"gpu_check: {why}; nothing to check", file=sys.stderr)
        return NO_CUDA
    write_json(out / "device.json", info)
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0


# --- the report ---------------------------------------------------------------------------
def training_summary(run: Path, peak_tflops: float | None) -> dict[str, Any]:
    """Target tokens/s and MFU of a run folder: the median of its 50-update windows after the
    first (which holds CUDA's start-up), FLOPs per target token from its prepared corpus."""
    from nmt.config import ModelConfig
    from nmt.config_file import from_dict
    from nmt.data.store import open_store

    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    records = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a run killed while writing it
            pass
    precision = next((r for r in records if r["type"] == "precision"), None)
    windows = [r for r in records if r["type"] == "train"]
    valid = [r for r in records if r["type"] == "valid"]
    if not windows:
        raise ValueError(f"{run / 'metrics.jsonl'} has no training record yet")
    steady = windows[1:] or windows
    tok_s = statistics.median(r["tgt_tokens_per_s"] for r in steady)
    model_cfg = from_dict(ModelConfig, config["model"])
    corpus = open_store(config["data"]["prepared"], config["train"]["max_len"])
    per_token, attention_share = flops_per_target_token(model_cfg, corpus.src_lens, corpus.tgt_lens)
    n_src, n_tgt = param_split(model_cfg)
    return {
        "updates": max(r["step"] for r in records if "step" in r),
        "dtype": config["train"]["dtype"],
        "languages": f"{config.get('src_lang', '?')}→{config.get('tgt_lang', '?')}",
        "log_every": config["train"]["log_every"],
        "batch_tokens": config["train"]["batch_tokens"],
        "windows": [(r["step"], round(r["tgt_tokens_per_s"])) for r in windows],
        "precision": precision,
        "steady_windows": len(steady) if len(windows) > 1 else 0,
        "tgt_tokens_per_s": tok_s,
        "data_wait_share": statistics.median(r.get("data_wait_share", 0.0) for r in steady),
        "n_src": n_src,
        "n_tgt": n_tgt,
        "flops_per_tgt_token": per_token,
        "attention_share": attention_share,
        "model_tflops": tok_s * per_token / 1e12,
        "mfu": mfu(tok_s * per_token, peak_tflops),
        "valid_bleu": valid[-1]["bleu"] if valid else None,
    }


def junit_counts(xml_path: Path) -> str:
    """``N passed, N failed, N skipped (reasons)`` from pytest's JUnit XML."""
    cases = ET.parse(xml_path).getroot().iter("testcase")
    counts, reasons = {"passed": 0, "failed": 0, "skipped": 0}, []
    for case in cases:
        skipped = case.find("skipped")
        if skipped is not None:
            counts["skipped"] += 1
            reasons.append(f"{case.get('name')}: {skipped.get('message')}")
        elif case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            reasons.append(f"{case.get('name')} FAILED")
        else:
            counts["passed"] += 1
    text = ", ".join(f"{n} {k}" for k, n in counts.items())
    return text + (f" ({'; '.join(reasons)})" if reasons else "")


def step_status(rc: str, limit: str, note: str) -> str:
    if rc == "-":
        return f"not run: {note}"
    if rc == "0":
        return "ok"
    return f"timed out at {limit} s" if rc in ("124", "137") else f"failed (exit {rc})"


def report_step(out: Path, run: Path) -> int:
    device: dict[str, Any] = read_json(out / "device.json") or {}
    sdpa = read_json(out / "sdpa.json")
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line]
    peak = device.get("peak_bf16_tflops")
    results: dict[str, str] = {}
    if device:
        results["device"] = (
            f"{device['device']} ({device['capability']}, {device['memory_gib']} GiB); bf16 "
            f"native: {device['bf16_native']}; peak bf16 "
            f"{f'{peak:g} TFLOP/s' if peak else 'n/a (not in the table)'}"
        )
    if (out / "cuda_tests.xml").is_file():
        results["cuda-tests"] = junit_counts(out / "cuda_tests.xml")
    if sdpa:
        results["sdpa"] = sdpa_kernels.summary(sdpa)
    train = None
    if (run / "metrics.jsonl").is_file():
        try:
            train = training_summary(run, peak)
        except Exception as exc:  # a run cut short: say so in the table
            results["train-base"] = f"no figures: {exc}"
    if train:
        write_json(out / "train.json", train)
        share = f"MFU {100 * train['mfu']:.3g}%" if train["mfu"] is not None else "MFU n/a"
        results["train-base"] = (
            f"{train['updates']} updates, {train['tgt_tokens_per_s']:,.0f} target tokens/s, {share}"
        )
    lines = [
        f"## GPU check ({time.strftime('%Y-%m-%d %H:%M')}, `benchmarks/gpu_check.sh`)",
        "",
        f"{device.get('device', 'no device')}; Python {device.get('python')}, torch "
        f"{device.get('torch')}, CUDA runtime {device.get('cuda_runtime')}, pytest "
        f"{device.get('pytest') or 'not installed'}, ctranslate2 "
        f"{device.get('ctranslate2') or 'not installed'}",
        "",
        "| step | status | seconds (limit) | result |",
        "|---|---|---:|---|",
    ]
    for row in steps:
        name, rc, seconds, limit, note = (row + [""] * 5)[:5]
        status = step_status(rc, limit, note)
        result = results.get(name, "").replace("|", "/")  # a | would end the cell
        lines.append(f"| {name} | {status} | {seconds} ({limit}) | {result} |")
    total = sum(int(s[2]) for s in steps)
    lines += ["", f"Steps before this report: {total} s of the 240 s budget."]
    if sdpa:
        lines += sdpa_kernels.markdown(sdpa)
    if train:
        lines += train_table(train, device.get("device", "?"), peak)
    text = "\n".join(lines) + "\n"
    (out / "gpu_check.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def train_table(train: dict[str, Any], device: str, peak: float | None) -> list[str]:
    """The training section: throughput, FLOPs per token, MFU, with the formula."""
    mfu_text = f"{100 * train['mfu']:.3g}%" if train["mfu"] is not None else "n/a"
    bleu = "-" if train["valid_bleu"] is None else f"{train['valid_bleu']:.2f}"
    windows = ", ".join(f"{tok:,} (to {step})" for step, tok in train["windows"])
    return [
        "",
        f"### Training `base` ({train['dtype']}, {train['batch_tokens']} tokens per batch, "
        f"{train['updates']} updates, {train['languages']})",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| target tokens/s (median of {train['steady_windows']} {train['log_every']}-update "
        f"windows after the first) | {train['tgt_tokens_per_s']:,.0f} |",
        f"| share of the step waiting for batches | {100 * train['data_wait_share']:.1f}% |",
        f"| N_src / N_tgt parameters | {train['n_src']:,} / {train['n_tgt']:,} |",
        f"| model FLOPs per target token | {train['flops_per_tgt_token'] / 1e6:,.1f} M |",
        f"| of which attention products | {100 * train['attention_share']:.1f}% |",
        f"| model TFLOP/s | {train['model_tflops']:.1f} |",
        f"| peak dense bf16 ({device}) | {f'{peak:g} TFLOP/s' if peak else 'n/a'} |",
        f"| **MFU** | **{mfu_text}** |",
        f"| valid BLEU at the end (greedy) | {bleu} |",
        f"| {PRECISION_ROW} | {precision_text(train.get('precision'))} |",
        "",
        f"Target tokens/s by window: {windows}.",
        "",
        FORMULA + ".",
    ]


PRECISION_ROW = "training / validation dtype; TF32 for float32 matmul, cuDNN"


def precision_text(record: dict[str, Any] | None) -> str:
    """The run's ``precision`` record (:meth:`nmt.train.trainer.Trainer.precision_record`) in
    one cell: validation should run in the training dtype, TF32 be on for float32 work."""
    if record is None:
        return "not recorded (a run of an nmt from before the record)"
    on = {True: "on", False: "off"}
    return (
        f"{record['train_dtype']} / {record['valid_dtype']}; TF32 {on[record['tf32']]}, "
        f"{on[record['cudnn_tf32']]}"
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("device", help="the device; exit 2 without CUDA").add_argument("out")
    report = steps.add_parser("report", help="DIR/gpu_check.md from the steps' results")
    report.add_argument("out")
    report.add_argument("run", help="the training run folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "device":
        return device_step(out)
    return report_step(out, Path(args.run))


if __name__ == "__main__":
    sys.exit(main())
