"""The suite's own rules (``conftest.py``, ``skips.py``): Multi30k is found in one of three
places or the run stops at once naming them, and a skip outside the allow-list fails; and
``junit_summary.py``, which counts a run's outcomes for ``.ci/run``.

The runs are real pytest processes on a copy of the suite's machinery (conftest, skips,
cpu_profile, pyproject.toml) in a temporary repository, beside which there is no ``shared/``,
with a one-module test folder: seconds, not the suite's minutes.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MULTI30K_ENV, REPO, find_multi30k
from junit_summary import read_counts, summary
from skips import reason

MACHINERY = ("conftest.py", "skips.py", "cpu_profile.py")


def fake_repo(root: Path, module: str) -> Path:
    """``ROOT/repo`` with the suite's machinery and ``tests/test_it.py`` = ``module``; its
    ``../shared`` (``ROOT/shared``) does not exist."""
    repo = root / "repo"
    (repo / "tests").mkdir(parents=True)
    for name in MACHINERY:
        shutil.copyfile(REPO / "tests" / name, repo / "tests" / name)
    shutil.copyfile(REPO / "pyproject.toml", repo / "pyproject.toml")
    (repo / "tests" / "test_it.py").write_text(module, encoding="utf-8")
    return repo


def run_pytest(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in ``repo`` with this checkout's nmt importable and ``NMT_MULTI30K`` unset."""
    env = {k: v for k, v in os.environ.items() if k != MULTI30K_ENV}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def fake_multi30k(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.de.gz").write_bytes(gzip.compress(b"Ein Hund.\n"))
    return folder


def test_no_data_anywhere_stops_the_run_naming_the_three_places(tmp_path: Path) -> None:
    module = "def test_needs_data(multi30k_dir):\n    pass\n\n\ndef test_needs_none():\n    pass\n"
    repo = fake_repo(tmp_path, module)
    done = run_pytest(repo)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"${MULTI30K_ENV}: (unset)" in output, output
    assert str(tmp_path / "shared" / "data" / "multi30k") in output
    assert str(repo / "data" / "multi30k") in output
    assert "make data" in output and "tests/test_it.py::test_needs_data" in output
    assert "passed" not in output  # stopped before any test, not after the others ran

    # The same selection without the test that needs the data runs.
    done = run_pytest(repo, "-k", "needs_none")
    assert done.returncode == 0, done.stdout + done.stderr


def test_skips_outside_the_allow_list_fail(tmp_path: Path) -> None:
    """With the data in ``data/multi30k`` (the third place): one test passes, the allowed
    skip is listed with its reason, and a bare skip, an importorskip, a skipif mark with
    another reason and a module skipped whole all fail."""
    module = f"""
import pytest
from skips import skip


def test_reads_the_third_place(multi30k_dir):
    assert multi30k_dir == __import__("pathlib").Path({str(tmp_path / "repo/data/multi30k")!r})


def test_allowed():
    skip("cuda")


def test_bare():
    pytest.skip("the data is not there")


def test_importorskip():
    pytest.importorskip("no_such_module_for_nmt_tests")


@pytest.mark.skipif(True, reason="no reason from the list")
def test_mark():
    pass
"""
    repo = fake_repo(tmp_path, module)
    fake_multi30k(repo / "data" / "multi30k")
    whole = "import pytest\n\npytest.importorskip('no_such_module_for_nmt_tests')\n"
    (repo / "tests" / "test_whole.py").write_text(whole, encoding="utf-8")
    report = tmp_path / "report.xml"
    done = run_pytest(repo, "--continue-on-collection-errors", f"--junitxml={report}")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    last = output.strip().splitlines()[-1]
    found = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", last)}
    # The skipif mark fails in setup, an error like the module's collection.
    assert found == {"failed": 2, "passed": 1, "skipped": 1, "errors": 2}, last
    assert "SKIPPED [1] tests/test_it.py" in output and "[cuda] needs a CUDA GPU" in output
    for name in ("test_bare", "test_importorskip"):
        assert f"FAILED tests/test_it.py::{name}" in output, output
    assert "not in the allow-list of tests/skips.py" in output
    assert "ERROR tests/test_it.py::test_mark" in output and "ERROR tests/test_whole.py" in output

    # .ci/run's summary of the same run, from its junit report.
    counts = read_counts(report)
    assert (counts.passed, counts.failed, counts.errors) == (1, 2, 2)
    assert counts.skipped == {reason("cuda"): 1}
    assert summary("native", report, "1").startswith(
        f"native (exit 1): 1 passed, 2 failed, 2 errors, 1 skipped\n    - 1: {reason('cuda')}"
    )
    assert "no test report" in summary("avx2", tmp_path / "absent.xml", "4")


def test_a_set_variable_is_the_only_place_looked_at(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shared = fake_multi30k(tmp_path / "shared" / "data" / "multi30k")
    mine = fake_multi30k(tmp_path / "mine")
    assert find_multi30k({}, repo) == (shared, "")
    assert find_multi30k({MULTI30K_ENV: str(mine)}, repo) == (mine, "")
    found, message = find_multi30k({MULTI30K_ENV: str(tmp_path / "empty")}, repo)
    assert found is None
    assert f"${MULTI30K_ENV}: {tmp_path / 'empty'}" in message
    assert "only its folder counts" in message
    shutil.rmtree(tmp_path / "shared")
    local = fake_multi30k(repo / "data" / "multi30k")
    assert find_multi30k({}, repo) == (local, "")


@pytest.mark.parametrize("key", ["cuda", "chromium"])
def test_allowed_skip_reasons_name_their_key(key: str) -> None:
    from skips import allowed_key

    assert allowed_key(f"Skipped: {reason(key, 'detail')}") == key
    assert allowed_key("Skipped: [nothing] x") is None and allowed_key("no key") is None
