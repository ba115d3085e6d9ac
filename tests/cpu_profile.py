"""The instruction sets torch (ATen, oneDNN, MKL) and CTranslate2 compute with, as each
library reports them; ``python tests/cpu_profile.py`` prints them.

CI's machines are AMD EPYCs of two generations: Zen 4 (AVX-512, native bf16) and Zen 3 (AVX2
only). ``.ci/run`` runs the suite, then the tests marked ``kernels`` once more with the host
limited to AVX2 by :data:`AVX2_PROFILE`, so that every run checks both kernel families. What
each variable does, measured on a Zen 4 (torch 2.13, CTranslate2 4.8):

- ``ATEN_CPU_CAPABILITY``: torch's own vectorized kernels (softmax, LayerNorm, elementwise).
- ``ONEDNN_MAX_CPU_ISA``: oneDNN, both the copy in torch (float32 linear layers through
  ``nmt.model.onednn``, bf16 matmuls) and the one in CTranslate2 (its float32 and int8 GEMMs
  on AMD).
- ``CT2_FORCE_CPU_ISA``: CTranslate2's own kernels; it picks AVX2 on AMD CPUs anyway.
- ``MKL_ENABLE_INSTRUCTIONS``: MKL (torch's float32 ``F.linear``) on Intel CPUs. On AMD CPUs
  MKL ignores it: the same bits with AVX512, AVX2, AVX and SSE4_2, and a verbose header that
  names no Intel instruction set; it does not use AVX-512 there, so Zen 3 and Zen 4 run the
  same MKL code.

torch's int8 linear layers (fbgemm) need no variable: they accumulate int8 products exactly
in int32, and gave the same bits with ``FBGEMM_ENABLE_INSTRUCTIONS`` AVX512, AVX2 and AVX.
CTranslate2's int8 products (oneDNN) are exact only with VNNI instructions (AVX-512 VNNI or
AVX-VNNI, "DL Boost" in oneDNN's ISA name): limited to AVX2, its int8 log-probabilities moved
ten times further from float32 (mean per-token difference 0.12 instead of 0.011, the export
test's model), which is what made int8 greedy outputs differ on Zen 3.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

AVX2_PROFILE = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "CT2_FORCE_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}

# Run in a fresh process (the libraries read their variables once, when they start): one
# oneDNN float32 linear (nmt.model.onednn), one MKL F.linear, and, when CTranslate2 is installed,
# one translation by a 1-layer model exported from random weights.
_PROBE = r"""
import json, re, sys, torch
from pathlib import Path
from nmt.model.onednn import OneDNNLinear
x, w = torch.randn(8, 64), torch.randn(32, 64)
OneDNNLinear(w, None)(x)
torch.nn.functional.linear(x, w)
onednn = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
report = {"aten": torch.backends.cpu.get_cpu_capability(), "onednn_version": onednn and onednn[1]}
try:
    import ctranslate2
except ImportError:
    ctranslate2 = None
if ctranslate2 is not None:
    from nmt.model.checkpoint import FORMAT_VERSION, save_weights, write_json
    from nmt.config import ModelConfig
    from nmt.config_file import to_dict
    from nmt.interop.export import export_ctranslate2
    from nmt.model.transformer import Transformer
    from nmt.data.tokenizer import train_tokenizer
    folder = Path(sys.argv[1])
    words = ["".join(chr(97 + (i * 7 + j * 3) % 26) for j in range(1 + i % 6)) for i in range(300)]
    train_tokenizer([" ".join(words[i:i + 9]) for i in range(290)], folder / "spm.model", 60)
    cfg = ModelConfig(vocab_size=60, d_model=16, n_heads=2, ffn_dim=32, n_encoder_layers=1,
                      n_decoder_layers=1, dropout=0.0)
    save_weights(folder / "model.safetensors", Transformer(cfg).eval())
    write_json(folder / "config.json", {"format_version": FORMAT_VERSION, "model": to_dict(cfg)})
    export_ctranslate2(folder, folder / "ct2")
    translator = ctranslate2.Translator(str(folder / "ct2"), device="cpu", intra_threads=1)
    translator.translate_batch([["\u2581a"]], max_decoding_length=2)
print("PROBE " + json.dumps(report), flush=True)
"""


def probe(env: dict[str, str] | None = None) -> dict[str, str]:
    """What the libraries report in a new process with ``os.environ`` updated by ``env``.

    Returns ``aten`` (torch's CPU capability), ``onednn`` (the ISA torch's oneDNN announces)
    and ``onednn_kernel`` (the implementation it ran the float32 linear with, e.g.
    ``brg_matmul:avx2``), ``mkl`` (the processor line of MKL's verbose header), and, with
    CTranslate2 installed, ``ct2`` (its selected ISA), ``ct2_onednn`` (the ISA its own oneDNN
    announces) and ``ct2_int8_gemm`` (the library of its int8 products: DNNL or MKL).
    """
    verbose = {"ONEDNN_VERBOSE": "1", "CT2_VERBOSE": "1", "MKL_VERBOSE": "1"}
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, folder],
            env={**os.environ, **(env or {}), **verbose},
            capture_output=True,
            text=True,
            timeout=300,
        )
    out = done.stdout + done.stderr
    if done.returncode != 0 or "PROBE " not in done.stdout:
        raise RuntimeError(f"the ISA probe failed (exit {done.returncode}):\n{out[-3000:]}")
    report = json.loads(done.stdout.split("PROBE ", 1)[1].splitlines()[0])
    # Each oneDNN copy announces "oneDNN vX.Y.Z (...)" and then "cpu,isa:NAME"; torch's copy
    # is the one of torch's version, CTranslate2's another.
    announced = re.findall(r"info,oneDNN v([\d.]+).*?info,cpu,isa:([^\n]+)", out, re.S)
    for version, isa in announced:
        report["onednn" if version == report["onednn_version"] else "ct2_onednn"] = isa.strip()
    kernel = re.search(r"primitive,exec,cpu,inner_product,([^,]+),", out)
    report["onednn_kernel"] = kernel.group(1) if kernel else "?"
    mkl = re.search(r"MKL_VERBOSE oneMKL [^\n]*? architecture ([^\n,]+)", out)
    report["mkl"] = mkl.group(1).strip() if mkl else "?"
    ct2 = {"ct2": r"Selected ISA: (\w+)", "ct2_int8_gemm": r"GEMM_S8 backend: (\w+)"}
    for key, pattern in ct2.items():
        found = re.search(pattern, out)
        if found:
            report[key] = found.group(1)
    return report


def describe(report: dict[str, str]) -> str:
    """One line per library."""
    names = {
        "aten": "ATen (torch.backends.cpu)",
        "onednn": "oneDNN in torch",
        "onednn_kernel": "oneDNN float32 linear kernel",
        "mkl": "MKL",
        "ct2": "CTranslate2",
        "ct2_onednn": "oneDNN in CTranslate2",
        "ct2_int8_gemm": "CTranslate2 int8 GEMM",
    }
    return "\n".join(f"{names[k]:<30} {report[k]}" for k in names if k in report)


def ct2_int8_is_exact(report: dict[str, str]) -> bool:
    """Whether CTranslate2's int8 products run on oneDNN with VNNI instructions, which sum
    int8 products exactly (see the module docstring); False where it runs them otherwise."""
    return report.get("ct2_int8_gemm") == "DNNL" and "DL Boost" in report.get("ct2_onednn", "")


if __name__ == "__main__":
    variables = " ".join(f"{k}={os.environ[k]}" for k in AVX2_PROFILE if k in os.environ)
    print(f"CPU profile ({variables or 'no limit set'}):")
    print(describe(probe()))
