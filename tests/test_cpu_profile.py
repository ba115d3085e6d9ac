"""The CPU profile the tests run under: the variables CI uses to limit the host to AVX2 really
reach the libraries, and a run with them set really computes with AVX2 kernels.

``.ci/run`` reruns the tests marked ``kernels`` under :data:`cpu_profile.AVX2_PROFILE`; if a
library stopped honouring its variable, that rerun would silently test the native kernels a
second time. The first test checks each variable in a fresh process, the second checks the
environment this run was started with (native, or limited).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cpu_profile import AVX2_PROFILE, describe, probe
from skips import skip

pytestmark = pytest.mark.kernels


def cpu_flags() -> set[str]:
    """The flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_avx2_profile_reaches_every_library() -> None:
    if "avx2" not in cpu_flags():
        skip("no-avx2")
    report = probe(AVX2_PROFILE)
    print(describe(report))
    assert report["aten"] == "AVX2"
    assert report["onednn"] == "Intel AVX2"  # not "... AVX-512 ..." nor "... DL Boost"
    assert report["onednn_kernel"].endswith(":avx2"), report["onednn_kernel"]
    if "ct2" in report:  # CTranslate2 installed
        assert report["ct2"] == "AVX2" and report["ct2_onednn"] == "Intel AVX2"
    # MKL names the instruction set it runs on Intel CPUs only (cpu_profile's docstring).
    if report["mkl"] != "Intel(R) Architecture processors":
        assert "AVX2" in report["mkl"] and "AVX-512" not in report["mkl"], report["mkl"]


def test_this_run_computes_with_the_kernels_its_environment_asks_for(
    cpu_isas: dict[str, str],
) -> None:
    """Under the AVX2 profile every library reports AVX2; without it, torch uses the best
    that the CPU offers (so a stray variable cannot turn the native run into a second AVX2
    run)."""
    print(describe(cpu_isas))
    flags = cpu_flags()
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if capability:
        assert torch.backends.cpu.get_cpu_capability() == capability.upper() == cpu_isas["aten"]
    elif {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        assert cpu_isas["aten"] == "AVX512"
    elif "avx2" in flags:
        assert cpu_isas["aten"] == "AVX2"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if isa == "AVX2":
        assert cpu_isas["onednn"] == "Intel AVX2" and cpu_isas["onednn_kernel"].endswith(":avx2")
        if "ct2_onednn" in cpu_isas:
            assert cpu_isas["ct2_onednn"] == "Intel AVX2"
    elif not isa and "avx512f" in flags:
        assert "AVX-512" in cpu_isas["onednn"] and "avx512" in cpu_isas["onednn_kernel"]
    if os.environ.get("CT2_FORCE_CPU_ISA") and "ct2" in cpu_isas:
        assert cpu_isas["ct2"] == os.environ["CT2_FORCE_CPU_ISA"]
