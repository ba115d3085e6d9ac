"""Which scaled-dot-product-attention kernel runs for the model's attention on a CUDA GPU,
and what the padding mask costs.

The encoder's self-attention and the cross-attention pass a boolean padding mask
(``(batch, 1, 1, src_len)``, True = attend) to ``F.scaled_dot_product_attention``, which rules
out the flash-attention backend; the decoder's self-attention passes only ``is_causal``. For
each of the model's calls at one training shape (bf16, the ``base`` preset's 8 heads of 64)
this prints the backend torch's dispatcher picks (``torch._fused_sdp_choice``), the kernels
the profiler sees, and, for each backend forced alone with ``sdpa_kernel``, its
forward+backward time or torch's reason for refusing the call; the unpadded encoder call
without a mask tells whether a mask-free path for unpadded batches would pay.

    python3 benchmarks/sdpa_kernels.py DIR [--batch-tokens 8192] [--length 32]

Writes ``DIR/sdpa.json`` (read by ``benchmarks/gpu_check.py report``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def attention_calls(batch: int, length: int, n_heads: int, head_dim: int) -> dict[str, tuple]:
    """The model's four kinds of SDPA call at one training shape, in bf16 on ``cuda``, as
    ``(q, k, v, attn_mask, is_causal)`` with ``(batch, n_heads, len, head_dim)`` tensors and
    the model's ``(batch, 1, 1, src_len)`` bool padding mask (True = attend); targets are 2
    positions longer than sources."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)

    def x(n: int) -> torch.Tensor:
        shape = (batch, n_heads, n, head_dim)
        t = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
        return t.requires_grad_()

    lengths = torch.randint(
        length - length // 4, length + 1, (batch,), generator=gen, device="cuda"
    )
    mask = (torch.arange(length, device="cuda") < lengths[:, None])[:, None, None, :]
    src, tgt = length, length + 2
    return {
        "encoder self-attention, padded (bool mask)": (x(src), x(src), x(src), mask, False),
        "cross-attention (bool mask)": (x(tgt), x(src), x(src), mask, False),
        "decoder self-attention (is_causal)": (x(tgt), x(tgt), x(tgt), None, True),
        "encoder self-attention, unpadded (no mask)": (x(src), x(src), x(src), None, False),
    }


def sdpa_once(call: tuple, backend: str | None) -> None:
    """Forward and backward of one SDPA call, on ``backend`` only (None: torch's choice)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, mask, causal = call
    context: AbstractContextManager[Any] = (
        sdpa_kernel([getattr(SDPBackend, backend)]) if backend else nullcontext()
    )
    with context:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        out.backward(torch.ones_like(out))
    for t in (q, k, v):
        t.grad = None


def time_ms(run: Callable[[], None], iters: int = 20) -> float:
    """Mean milliseconds of ``run()`` on the GPU after 3 untimed runs (CUDA events)."""
    import torch

    for _ in range(3):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


# How torch's warnings head the reasons of each backend when no enabled backend takes a call
# (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, select_sdp_backend).
WARNING_HEADS = {
    "FLASH_ATTENTION": "flash attention kernel not used because",
    "EFFICIENT_ATTENTION": "memory efficient kernel not used because",
    "CUDNN_ATTENTION": "cudnn attention kernel not used because",
}


def refusal(call: tuple, backend: str) -> str | None:
    """None if ``backend`` alone runs the call, else why not: the reasons torch warns under
    that backend's heading (it lists every backend's), or the error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sdpa_once(call, backend)
            return None
        except Exception as exc:  # torch raises RuntimeError; anything else is a refusal too
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    heading, reasons = None, []
    for message in (str(w.message).strip() for w in caught):
        if message.lower().rstrip(":") in WARNING_HEADS.values():
            heading = message.lower().rstrip(":")
        elif heading == WARNING_HEADS.get(backend):
            reasons.append(message)
    return "; ".join(dict.fromkeys(reasons)) or error


def chosen_backend(call: tuple) -> str:
    """The backend torch's dispatcher picks for the call (``torch._fused_sdp_choice``)."""
    import torch
    from torch.nn.attention import SDPBackend

    q, k, v, mask, causal = call
    try:
        # typed as the SDPBackend enum, an int at run time
        choice: Any = torch._fused_sdp_choice(q, k, v, attn_mask=mask, is_causal=causal)
        index = int(choice)
    except Exception as exc:  # a private function: report rather than fail
        return f"unknown ({exc})"
    names = {value.value: name for name, value in SDPBackend.__members__.items()}
    return names.get(index, str(index))


def kernel_names(call: tuple) -> list[str]:
    """The aten attention ops (their names say the backend) and the first CUDA attention
    kernels the profiler sees in one forward+backward of torch's choice for the call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sdpa_once(call, None)
        torch.cuda.synchronize()
    events = prof.events()
    ops = [e.name for e in events if e.name.startswith(("aten::_scaled_dot", "aten::_flash",
           "aten::_efficient", "aten::_cudnn"))]  # fmt: skip
    words = ("fmha", "flash", "attn", "attention", "cudnn", "softmax")
    kernels = [
        e.name
        for e in events
        if str(e.device_type).endswith("CUDA") and any(w in e.name.lower() for w in words)
    ]
    return [name[:80] for name in dict.fromkeys(ops)][:2] + [
        name[:80] for name in dict.fromkeys(kernels)
    ][:2]


def probe(out: Path, batch_tokens: int, length: int) -> int:
    """Which backends accept each of the model's SDPA calls at the ``base`` shape (8 heads
    of 64) and ``batch_tokens // length`` sentences, which one torch picks, and their
    forward+backward times."""
    import torch

    batch = max(1, batch_tokens // length)
    print(f"SDPA, bf16, forward+backward, batch {batch} × length {length}, 8 heads × 64:")
    shape = {"batch": batch, "length": length, "n_heads": 8, "head_dim": 64}
    data: dict[str, Any] = {"shape": shape, "torch": torch.__version__, "calls": []}
    for name, call in attention_calls(batch, length, 8, 64).items():
        row: dict[str, Any] = {"call": name, "chosen": chosen_backend(call), "backends": {}}
        row["default_ms"] = time_ms(partial(sdpa_once, call, None))
        for backend in BACKENDS:
            why = refusal(call, backend)
            timing = None if why else time_ms(partial(sdpa_once, call, backend))
            row["backends"][backend] = {"refused": why, "ms": timing}
        try:
            row["kernels"] = kernel_names(call)
        except Exception as exc:  # the profiler needs CUPTI
            row["kernels"] = [f"profiler failed: {exc}"]
        data["calls"].append(row)
        # Written after every call: a backend that crashes the process leaves the rows so far.
        (out / "sdpa.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"- {name}: torch picks {row['chosen']} ({row['default_ms']:.3f} ms), kernels "
              f"{', '.join(row['kernels']) or '-'}")  # fmt: skip
        for backend, r in row["backends"].items():
            said = f"{r['ms']:.3f} ms" if r["refused"] is None else f"refused: {r['refused']}"
            print(f"    {backend}: {said}")
    print(summary(data))
    return 0


def summary(sdpa: dict[str, Any]) -> str:
    """One line: torch's choice for the masked calls, flash's refusal, masked vs mask-free."""
    calls = sdpa["calls"]
    if len(calls) < 4:
        return f"only {len(calls)} of the 4 calls measured (see sdpa.log)"
    flash = calls[0]["backends"]["FLASH_ATTENTION"]["refused"]
    masked, free = calls[0]["default_ms"], calls[3]["default_ms"]
    return (
        f"with the bool mask torch picks {calls[0]['chosen']}, flash "
        f"{'refuses' if flash else 'accepts'} it; unpadded without a mask: "
        f"{calls[3]['chosen']}, {masked / free:.2f}× as fast"
    )


def markdown(sdpa: dict[str, Any]) -> list[str]:
    """The SDPA section: per call, torch's choice, each backend's time or refusal, kernels."""
    shape = sdpa["shape"]
    lines = [
        "",
        f"### SDPA kernels (bf16, forward+backward, batch {shape['batch']} × length "
        f"{shape['length']}, {shape['n_heads']} heads × {shape['head_dim']}; ms per call)",
        "",
        "| call | torch picks | " + " | ".join(BACKENDS) + " | kernels seen |",
        "|---|---|" + "---|" * len(BACKENDS) + "---|",
    ]
    for row in sdpa["calls"]:
        cells = []
        for backend in BACKENDS:
            r = row["backends"][backend]
            refused = str(r["refused"]).replace("|", "/")  # a | would end the cell
            cells.append(f"{r['ms']:.3f}" if r["refused"] is None else f"refused: {refused}")
        lines.append(
            f"| {row['call']} | {row['chosen']} ({row['default_ms']:.3f}) | "
            + " | ".join(cells)
            + f" | {', '.join(row['kernels'])} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for sdpa.json")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="tokens per batch")
    parser.add_argument("--length", type=int, default=32, help="source positions per sentence")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("sdpa_kernels: no CUDA device: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return probe(out, args.batch_tokens, args.length)


if __name__ == "__main__":
    sys.exit(main())
