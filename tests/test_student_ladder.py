"""benchmarks/student_ladder.py end to end on the tiny run (as teacher and as student), on a
few lines: it exports to CTranslate2, translates with every rung and prints the table. Speed
is not checked (no timed assertions); BLEU is, where two rungs compute the same thing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nmt.config import DecodeConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "student_ladder.py"


def test_ladder_prints_every_rung(tiny_run: Path, multi30k_dir: Path) -> None:
    args = [sys.executable, str(SCRIPT), "--teacher", str(tiny_run), "--student", str(tiny_run)]
    args += ["--data", str(multi30k_dir), "--lines", "6", "--repeats", "1", "--beams", "1"]
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# ") and "threads" in lines[0] and "family" in lines[0]
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and "---" not in line]
    header, rows = rows[0], rows[1:]
    assert header[:3] == ["| model", "engine", "dtype"]
    rungs = [(r[0].strip("| "), r[1], r[2], r[3]) for r in rows]
    plain = [
        ("teacher", "torch", "float32", "no"),
        ("teacher", "ctranslate2", "float32", "no"),
        ("student", "torch", "float32", "no"),
        ("student", "torch", "int8", "no"),
        ("student", "ctranslate2", "float32", "no"),
    ]
    if "shortlist" in DecodeConfig.__dataclass_fields__:  # --shortlist exists: rows may add
        assert [r for r in rungs if r[3] == "no"][:5] == plain
        assert rungs[-1][:3] == ("student", "ctranslate2", "int8")
    else:
        assert "# no shortlist row: this nmt has no --shortlist" in lines
        assert rungs == [*plain, ("student", "ctranslate2", "int8", "no")]
    bleu = {rung: float(r[7]) for rung, r in zip(rungs, rows)}
    assert all(0 <= b <= 100 for b in bleu.values())
    # the tiny run is both teacher and student: the same model through the same path
    assert bleu[plain[0]] == bleu[plain[2]]
