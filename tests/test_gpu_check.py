"""benchmarks/gpu_check.sh and its helper, on a machine without a GPU: the FLOP counts and MFU
on numbers worked out by hand, the report built from the files a GPU run leaves, and the
script's "no CUDA device" exit."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from skips import skipif

from nmt.config import TrainConfig
from nmt.config_file import to_dict
from nmt.data.store import prepare
from nmt.model.transformer import Transformer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    """benchmarks/gpu_check.py (a script, not a package; it imports its neighbour
    sdpa_kernels), imported with benchmarks/ on sys.path for this module's tests only: the
    path and both modules are gone again afterwards."""
    added = [name for name in ("gpu_check", "sdpa_kernels") if name not in sys.modules]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        try:
            yield importlib.import_module("gpu_check")
        finally:
            for name in added:
                sys.modules.pop(name, None)


# The tiny preset (d_model 64, ffn 256, 2+2 layers, pre-norm) with 1000 pieces, by hand:
# encoder layer = qkv 64·192+192 + out 64·64+64 + fc1 64·256+256 + fc2 256·64+64 + 2 LayerNorms
# 2·128 = 49,984; two of them + the final LayerNorm 128 = 100,096. Decoder layer = 49,984 +
# cross q 4,160 + cross kv 64·128+128 = 8,320 + cross out 4,160 + a LayerNorm 128 = 66,752;
# two + 128 = 133,632, of which the two cross kv projections, 16,640, read source tokens.
# Output projection: the tied embedding, 1000·64 = 64,000.
TINY_SRC_PARAMS = 100_096 + 16_640
TINY_TGT_PARAMS = 133_632 - 16_640 + 64_000


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10G", None),
        ("NVIDIA A10", 125.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("Tesla V100-SXM2-16GB", None),
        ("Some Future GPU", None),
    ],
)
def test_peak_bf16_by_device_name(gpu_check: ModuleType, name: str, peak: float | None) -> None:
    assert gpu_check.peak_bf16_tflops(name) == peak


def test_flop_formulas_on_numbers_worked_by_hand(gpu_check: ModuleType) -> None:
    # 6 × (10 params × 100 source tokens + 20 × 200 target tokens) = 30,000, plus attention
    assert gpu_check.training_flops(10, 20, 100, 200, 7.0) == 30_007.0
    # d_model 4, 1 encoder and 2 decoder layers, one sentence of S=3, T=2 positions:
    # 12 · 4 · (1·3² + 2·(2² + 2·3)) = 48 · 29 = 1,392; a second one adds its own
    assert gpu_check.attention_flops(4, 1, 2, [3], [2]) == 1_392.0
    assert gpu_check.attention_flops(4, 1, 2, [3, 1], [2, 1]) == 1_392.0 + 48 * (1 + 2 * 2)
    assert gpu_check.mfu(494.5e12, 989.0) == pytest.approx(0.5)
    assert gpu_check.mfu(494.5e12, None) is None


def test_parameters_split_into_source_and_target_side(
    gpu_check: ModuleType, tiny_model_config
) -> None:
    cfg = tiny_model_config()
    assert gpu_check.param_split(cfg) == (TINY_SRC_PARAMS, TINY_TGT_PARAMS)
    # every parameter counted once: the embedding only as the output projection
    assert TINY_SRC_PARAMS + TINY_TGT_PARAMS == sum(
        p.numel() for p in Transformer(cfg).parameters()
    )


def expected_flops_per_target_token(src_lens: np.ndarray, tgt_lens: np.ndarray) -> float:
    """The tiny preset's training FLOPs per target token, spelled out (EOS and BOS add one
    position to each side)."""
    s, t = src_lens + 1.0, tgt_lens + 1.0
    dense = 6 * (TINY_SRC_PARAMS * s.sum() + TINY_TGT_PARAMS * t.sum())
    attention = 12 * 64 * (2 * s**2 + 2 * (t**2 + t * s)).sum()
    return float((dense + attention) / t.sum())


def test_flops_per_target_token(gpu_check: ModuleType, tiny_model_config) -> None:
    src, tgt = np.array([5, 9, 20]), np.array([6, 7, 25])
    per_token, share = gpu_check.flops_per_target_token(tiny_model_config(), src, tgt)
    assert per_token == pytest.approx(expected_flops_per_target_token(src, tgt), rel=1e-12)
    assert 0 < share < 0.5


def write_gpu_run(out: Path, run: Path, data: Path, model_cfg) -> None:  # type: ignore[no-untyped-def]
    """What a GPU run of gpu_check.sh leaves before its report: the device step's JSON, the
    step log, pytest's JUnit XML, the SDPA step's JSON and a training run folder (this
    one's metrics made up: 50-update windows, the first slow with CUDA's start-up)."""
    out.mkdir()
    run.mkdir()
    device = {"device": "NVIDIA H200", "capability": "sm_90", "memory_gib": 139.8,
              "bf16_native": True, "peak_bf16_tflops": 989.0, "python": "3.12.3",
              "torch": "2.11.0+cu130", "cuda_runtime": "13.0", "pytest": None,
              "ctranslate2": None}  # fmt: skip
    (out / "device.json").write_text(json.dumps(device))
    (out / "steps.tsv").write_text(
        "device\t0\t4\t20\t\n"
        "nvidia-smi\t-\t0\t5\tnvidia-smi not found\n"
        "cuda-tests\t1\t52\t75\t\n"
        "sdpa\t124\t20\t20\t\n"
        "train-base\t0\t71\t95\t\n"
    )
    (out / "cuda_tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_a"/>'
        '<testcase classname="tests.test_cuda" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c">'
        '<skipped type="pytest.skip" message="ctranslate2 sees no CUDA device"/></testcase>'
        "</testsuite></testsuites>"
    )
    config = {"model": to_dict(model_cfg), "data": {"prepared": str(data)},
              "src_lang": "de", "tgt_lang": "en",
              "train": to_dict(TrainConfig(dtype="bf16", batch_tokens=8192))}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    speeds = [40_000, 100_000, 120_000, 110_000, 90_000, 130_000]
    records = [
        {"type": "train", "step": 50 * (i + 1), "tgt_tokens_per_s": v, "data_wait_share": 0.01}
        for i, v in enumerate(speeds)
    ] + [{"type": "valid", "step": 300, "bleu": 12.345}]
    records.insert(0, {"type": "precision", "step": 0, "train_dtype": "bfloat16",
                       "valid_dtype": "bfloat16", "tf32": True, "cudnn_tf32": True})  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_from_what_a_gpu_run_leaves(
    gpu_check: ModuleType, tmp_path: Path, tiny_corpus, spm_model: Path, tiny_model_config, capsys
) -> None:
    data = tmp_path / "data"
    prepare(tiny_corpus[0], data, "de", "en", spm_path=spm_model)
    capsys.readouterr()
    out, run = tmp_path / "out", tmp_path / "run"
    write_gpu_run(out, run, data, tiny_model_config())
    assert gpu_check.main(["report", str(out), str(run)]) == 0

    train = json.loads((out / "train.json").read_text())
    assert train["tgt_tokens_per_s"] == 110_000  # median of the windows after the first
    assert train["updates"] == 300 and train["valid_bleu"] == 12.345
    meta = json.loads((data / "meta.json").read_text())
    src = np.diff(np.load(data / f"train.{meta['src_lang']}.idx.npy"))
    tgt = np.diff(np.load(data / f"train.{meta['tgt_lang']}.idx.npy"))
    per_token = expected_flops_per_target_token(src, tgt)
    assert train["flops_per_tgt_token"] == pytest.approx(per_token, rel=1e-12)
    assert train["mfu"] == pytest.approx(110_000 * per_token / 989e12, rel=1e-12)

    table = (out / "gpu_check.md").read_text()
    assert capsys.readouterr().out.strip() == table.strip()  # written and printed
    for row in (
        "| device | ok | 4 (20) | NVIDIA H200 (sm_90, 139.8 GiB); bf16 native: True; peak "
        "bf16 989 TFLOP/s |",
        "| nvidia-smi | not run: nvidia-smi not found | 0 (5) |  |",
        "| cuda-tests | failed (exit 1) | 52 (75) | 1 passed, 1 failed, 1 skipped (test_b "
        "FAILED; test_c: ctranslate2 sees no CUDA device) |",
        "| sdpa | timed out at 20 s | 20 (20) |  |",
        "| train-base | ok | 71 (95) | 300 updates, 110,000 target tokens/s, MFU "
        f"{100 * train['mfu']:.3g}% |",
        f"| **MFU** | **{100 * train['mfu']:.3g}%** |",
        "| valid BLEU at the end (greedy) | 12.35 |",
        "| training / validation dtype; TF32 for float32 matmul, cuDNN | bfloat16 / bfloat16; "
        "TF32 on, on |",
        "| target tokens/s (median of 5 50-update windows after the first) | 110,000 |",
        "### Training `base` (bf16, 8192 tokens per batch, 300 updates, de→en)",
    ):
        assert row in table
    assert "6 × (N_src × source tokens + N_tgt × target tokens)" in table


@skipif(torch.cuda.is_available(), "gpu-present")
def test_the_script_says_no_cuda_device_and_fails(tmp_path: Path) -> None:
    script = BENCHMARKS / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "gpu_check: no CUDA device: torch.cuda.is_available() is False" in done.stdout
    assert not (tmp_path / "out" / "gpu_check.md").exists()
    assert (tmp_path / "out" / "steps.tsv").read_text().startswith("device\t2\t")


def test_the_script_wants_a_folder() -> None:
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 64 and "usage: benchmarks/gpu_check.sh DIR" in done.stderr
