"""A real ``nmt serve`` process on a free loopback port, and a small HTTP client (stdlib only),
for the server's tests, its browser test and ``benchmarks/serve_load.py``; and, for tests in
process, the app of loaded models behind FastAPI's test client (:func:`serving`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# What nmt serve prints on stderr once its port is bound and listening.
LISTENING = re.compile(r"listening on (http://\S+)")


@contextlib.contextmanager
def serving(models: dict[str, Any], workers: int = 1, max_wait_ms: float = 0.0) -> Iterator[Any]:
    """In process: ``models`` (:func:`nmt.serve.registry.load_models`) behind their batchers, as a
    FastAPI ``TestClient`` of the app; the batchers and their worker pool are closed after.
    (FastAPI is imported here, so that this module stays stdlib-only for the others.)"""
    from fastapi.testclient import TestClient

    from nmt.serve.app import create_app
    from nmt.serve.config import ServeConfig
    from nmt.serve.registry import start_batchers

    pool = start_batchers(models, workers, 4096, max_wait_ms)
    try:
        yield TestClient(create_app(models, ServeConfig()))
    finally:
        for model in models.values():
            if model.batcher is not None:
                model.batcher.close()
        pool.shutdown()


def request(
    url: str,
    body: bytes | dict[str, Any] | None = None,
    content_type: str = "application/json",
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """``(status, decoded JSON or text)`` of a GET (``body`` None) or POST; HTTP errors are
    returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class ServerProcess:
    """``nmt serve ARGS --port 0`` in a subprocess on 127.0.0.1: the server binds a free port
    itself and names it in its ``listening on`` line, which :meth:`wait_ready` reads (no
    port found free here and bound later, by when another process may have taken it).

    Use as a context manager; leaving it sends SIGTERM (if still running) and waits.
    ``launcher`` replaces ``python -m cli`` (a benchmark's variant of the server).
    """

    def __init__(self, args: list[str], log: Path, launcher: list[str] | None = None):
        self.url = ""  # http://127.0.0.1:PORT, once wait_ready has read it
        self.log_path = log
        path = [str(REPO), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        cmd = [*(launcher or [sys.executable, "-m", "cli"]), "serve", *args, "--host", "127.0.0.1"]
        cmd += ["--port", "0", "--log-level", "warning"]
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.signalled = False
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout: float = 180.0) -> ServerProcess:
        """Read the server's URL from its ``listening on`` line, then poll ``GET /health``
        until it answers.

        Raises:
            RuntimeError: the process exited or did not answer in time (with its log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nmt serve exited with {self.proc.returncode}:\n{self.output()}"
                )
            if not self.url:
                found = LISTENING.search(self.log_path.read_text(errors="replace"))
                self.url = found.group(1) if found else ""
            try:
                if self.url and request(self.url + "/health", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"nmt serve did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        """The end of the server's log, and its exit status once it has exited."""
        if not self.log.closed:
            self.log.flush()
        status = "" if self.proc.returncode is None else f"\nexit status {self.proc.returncode}"
        return self.log_path.read_text(errors="replace")[-5000:] + status

    def terminate(self) -> None:
        """SIGTERM, once: a second one during the graceful shutdown would find the default
        handler back in place (uvicorn restores it once serving has stopped) and kill the
        process while it closes its batchers, exit status -15 instead of 0."""
        if self.proc.poll() is None and not self.signalled:
            self.signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit status (killed after ``timeout`` s)."""
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
