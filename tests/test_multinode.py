"""Two-node training on one machine: two ``torchrun`` launchers, one process each, meeting
at a c10d rendezvous on 127.0.0.1 (what two machines do over a network), whose store the test
hosts on a port the system picks.

They train and resume; ``kill -9`` of one node's process makes the other exit with a clear
error within seconds (not a hang until a timeout), and relaunching both continues from the
last resume checkpoint. A run folder that the second node does not see is refused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.distributed import TCPStore

from nmt.model.checkpoint import RESUME_FILE, load_resume

ROOT = Path(__file__).parents[1]


@contextlib.contextmanager
def rendezvous_store() -> Iterator[int]:
    """The port of a c10d store this test process hosts on a port the system picks, for the
    launchers' rendezvous (``is_host=false``: both join it as clients). No port is found free,
    released and bound later by a launcher, by when another process may have taken it."""
    store = TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True, wait_for_workers=False)
    try:
        yield store.port
    finally:
        del store  # the server stops with its last reference


def launch(
    node: int, port: int, out: Path, corpus: tuple[Path, Path], steps: int, cwd: Path, log: Path
) -> subprocess.Popen:
    """One node's ``torchrun`` (its own process group, so the test can clean up after it),
    meeting the other at the store of :func:`rendezvous_store` on ``port``."""
    train, valid = corpus
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
        "--rdzv_conf", "is_host=false", "--rdzv_id", f"test-{port}", "-m", "cli", "train",
        "--train", str(train), "--valid", str(valid), "--output", str(out), "--preset", "tiny",
        "--vocab-size", "500", "--max-steps", str(steps), "--eval-every", "1000",
        "--save-every", "5", "--batch-tokens", "1024", "--dtype", "fp32", "--device", "cpu",
        "--dist-timeout", "5",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(*nodes: subprocess.Popen, timeout: float = 240) -> list[int]:
    """The exit codes of ``nodes`` (killed, with their workers, if they run past ``timeout``)."""
    deadline, codes = time.monotonic() + timeout, []
    for node in nodes:
        try:
            codes.append(node.wait(max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            codes.append(node.wait())
    return codes


def worker_of(launcher: subprocess.Popen) -> int:
    """The pid of the training process a ``torchrun`` launcher started."""
    for _ in range(600):
        found = subprocess.run(
            ["pgrep", "-P", str(launcher.pid), "-f", "cli train"], capture_output=True, text=True
        ).stdout.split()
        if found:
            return int(found[0])
        time.sleep(0.1)
    raise AssertionError("the launcher started no worker")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, multi30k, corpus_writer) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("multinode-data")
    train = corpus_writer(
        folder / "train", multi30k("train", "de", 1500), multi30k("train", "en", 1500)
    )
    valid = corpus_writer(folder / "valid", multi30k("val", "de", 20), multi30k("val", "en", 20))
    return train, valid


def wait_for_file(path: Path, nodes: list[subprocess.Popen], logs: list[Path]) -> None:
    """Wait (up to 120 s) for ``path``; fail, with the nodes stopped and their logs shown,
    when it never appears or the nodes exit first."""
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline or any(node.poll() is not None for node in nodes):
            codes = finish(*nodes, timeout=1)
            tails = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
            pytest.fail(f"{path.name} never appeared (exit codes {codes}):\n{tails}")
        time.sleep(0.1)


def test_two_nodes_train_survive_a_killed_node_and_resume(corpus, tmp_path: Path) -> None:
    out = tmp_path / "run"
    logs = [tmp_path / f"node{n}.log" for n in (0, 1)]
    with rendezvous_store() as port:
        nodes = [launch(n, port, out, corpus, 400, tmp_path, logs[n]) for n in (0, 1)]
        worker = worker_of(nodes[1])
        wait_for_file(out / RESUME_FILE, nodes, logs)  # the first resume checkpoint (step 5)
        time.sleep(1.0)  # a few more steps, so that the kill lands mid-training
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        codes = finish(*nodes, timeout=120)
    assert codes[0] != 0 and codes[1] != 0
    assert time.monotonic() - killed_at < 60  # an error, not a wait for --dist-timeout
    text = logs[0].read_text(encoding="utf-8", errors="replace")
    assert "error: process 0 of 2 lost contact with the others" in text, text[-3000:]
    assert "relaunch every node with the same command" in text
    saved = load_resume(out / RESUME_FILE)
    assert saved["world_size"] == 2 and saved["state"]["step"] >= 5
    step = saved["state"]["step"]

    # Relaunching both nodes continues from the checkpoint.
    with rendezvous_store() as port:
        nodes = [launch(n, port, out, corpus, step + 5, tmp_path, logs[n]) for n in (0, 1)]
        assert finish(*nodes) == [0, 0], logs[0].read_text(encoding="utf-8")[-3000:]
    assert "resuming from" in logs[0].read_text(encoding="utf-8")
    assert load_resume(out / RESUME_FILE)["state"]["step"] == step + 5


def test_a_run_folder_the_other_node_cannot_see_is_refused(corpus, tmp_path: Path) -> None:
    """A relative --output from two working directories: two folders, as on two machines
    without a shared filesystem."""
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    cwds = [tmp_path / "machine0", tmp_path / "machine1"]
    nodes = []
    with rendezvous_store() as port:
        for n in (0, 1):
            cwds[n].mkdir()
            nodes.append(launch(n, port, Path("run"), corpus, 5, cwds[n], logs[n]))
        codes = finish(*nodes, timeout=180)
    assert codes[0] != 0 and codes[1] != 0
    text = logs[0].read_text(encoding="utf-8")
    assert "rank 1 on " in text and "cannot see the run folder run" in text, text[-3000:]
    assert "filesystem every node mounts" in text
    assert not (cwds[0] / "run" / RESUME_FILE).exists()
