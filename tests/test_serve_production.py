"""``nmt serve`` as run in production, tested as a client sees it (a real uvicorn server on a
loopback port, two worker threads): the bounded queue (503 and Retry-After), the 504 of a
request whose batch is running (its lines left out), readiness, Prometheus metrics, request
ids, API keys and CORS; and, in process, the generic 500 and LibreTranslate's fields.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from serve_client import ServerProcess, request, serving

pytest.importorskip("fastapi", reason="nmt serve needs the serve extra: pip install -e '.[serve]'")
parser = pytest.importorskip("prometheus_client.parser", reason="the serve extra")

KEY = "test-key-0123456789"
ORIGIN = "https://app.example"
AUTH = {"Authorization": f"Bearer {KEY}"}


def call(
    url: str,
    body: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, str], Any]:
    """``(status, headers with lower-case names, decoded JSON or text)``; HTTP errors are
    returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=120) as res:
            status, got, raw = res.status, res.headers, res.read()
    except urllib.error.HTTPError as err:
        status, got, raw = err.code, err.headers, err.read()
    heads = {k.lower(): v for k, v in got.items()}
    try:
        return status, heads, json.loads(raw)
    except ValueError:
        return status, heads, raw.decode("utf-8", "replace")


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed: ``{(sample name, sorted labels): value}``."""
    status, heads, text = call(url + "/metrics")
    assert status == 200 and heads["content-type"].startswith("text/plain"), text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(values: dict[Any, float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def lines(multi30k: Callable[..., list[str]]) -> list[str]:
    return multi30k("val", "de", 64)


@pytest.fixture(scope="module")
def guarded(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two workers, API keys and CORS for one origin."""
    folder = tmp_path_factory.mktemp("guarded")
    keys = folder / "keys.txt"
    keys.write_text(f"# the test's key\n\n{KEY}\nsecond-key-abcdefgh\n")
    args = ["-m", f"tiny={tiny_run}", "--workers", "2", "--api-key-file", str(keys)]
    args += ["--cors-origin", ORIGIN]
    with ServerProcess(args, folder / "server.log") as proc:
        yield proc


def test_api_keys_guard_the_translation_routes(guarded: ServerProcess, lines: list[str]) -> None:
    """No key: 401; a wrong one: 403; a right one in either header, or LibreTranslate's
    api_key field (JSON or form): answered. /health and /metrics need none."""
    url = guarded.url
    body = {"src": lines[:1]}
    status, _, answer = call(url + "/v1/translate", body)
    assert (status, answer["error"]["code"]) == (401, "missing_api_key"), answer
    assert "Authorization: Bearer KEY" in answer["error"]["message"]
    status, _, answer = call(url + "/v1/translate", body, {"X-API-Key": "wrong-key-123456"})
    assert (status, answer["error"]["code"]) == (403, "invalid_api_key")
    assert call(url + "/v1/translate", body, AUTH)[0] == 200
    assert call(url + "/v1/translate", body, {"X-API-Key": "second-key-abcdefgh"})[0] == 200
    assert call(url + "/v1/models")[0] == 401
    lt = {"q": lines[0], "source": "de", "target": "en"}
    status, _, answer = call(url + "/translate", lt)
    assert status == 401 and "api_key" in answer["error"]
    status, _, answer = call(url + "/translate", {**lt, "api_key": "nope-nope-nope"})
    assert status == 403 and "not valid" in answer["error"]
    assert call(url + "/translate", {**lt, "api_key": KEY})[0] == 200
    form = urlencode({**lt, "api_key": KEY}).encode()
    assert (
        call(url + "/translate", form, content_type="application/x-www-form-urlencoded")[0] == 200
    )
    assert call(url + "/translate", lt, AUTH)[0] == 200
    assert call(url + "/health")[0] == 200 and call(url + "/languages")[0] == 200


def test_every_answer_carries_its_request_id(guarded: ServerProcess, lines: list[str]) -> None:
    """The client's X-Request-ID comes back; without one (or an unusable one) the server
    makes one; errors of every kind carry it too (401, 404, the body limit's 413)."""
    url = guarded.url + "/v1/translate"
    _, heads, _ = call(url, {"src": lines[:1]}, {**AUTH, "X-Request-ID": "client-id-42"})
    assert heads["x-request-id"] == "client-id-42"
    made = {call(url, {"src": lines[:1]}, AUTH)[1]["x-request-id"] for _ in range(2)}
    assert len(made) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made)
    _, heads, _ = call(url, {"src": lines[:1]}, {**AUTH, "X-Request-ID": "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", heads["x-request-id"])
    for status, got in [
        (401, call(url, {"src": ["a"]}, {"X-Request-ID": "r-401"})),
        (404, call(guarded.url + "/nowhere", None, {"X-Request-ID": "r-404"})),
        # A body declared too large is refused on its Content-Length before it is read (a
        # real 600 kB body raced the refusal: the server closed while the client still sent).
        (413, call(url, b'{"src": ["a"]}', {"X-Request-ID": "r-413", "Content-Length": "600000"})),
    ]:
        assert (got[0], got[1]["x-request-id"]) == (status, f"r-{status}"), got[2]


def test_cors_lets_the_configured_origin_in(guarded: ServerProcess, lines: list[str]) -> None:
    """A preflight from the origin given with --cors-origin is allowed (the key and request
    id headers too), another origin's is not; answers expose X-Request-ID to the page."""
    url = guarded.url + "/v1/translate"
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization, x-request-id",
    }
    status, heads, _ = call(url, None, preflight, method="OPTIONS")
    assert status == 200 and heads["access-control-allow-origin"] == ORIGIN
    assert "authorization" in heads["access-control-allow-headers"].lower()
    status, heads, _ = call(url, None, {**preflight, "Origin": "https://evil.example"}, "OPTIONS")
    assert status == 400 and "access-control-allow-origin" not in heads
    status, heads, _ = call(url, {"src": lines[:1]}, {**AUTH, "Origin": ORIGIN})
    assert status == 200 and heads["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in heads["access-control-expose-headers"].lower()
    _, heads, _ = call(url, {"src": lines[:1]}, {**AUTH, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in heads


def test_a_deprecated_field_is_answered_with_a_deprecation_signal(
    guarded: ServerProcess, lines: list[str]
) -> None:
    """``return_alignment`` (replaced by ``return_piece_alignment``) still answers its pairs,
    now with ``Deprecation: true``, a ``Warning: 299`` naming the replacement (both exposed
    to pages of the CORS origin) and a line in the server's log with the request id; it was
    deprecated in the schema alone. A request without it has neither header."""
    url = guarded.url + "/v1/translate"
    body = {"src": lines[:1], "return_alignment": True}
    status, heads, answer = call(url, body, {**AUTH, "Origin": ORIGIN, "X-Request-ID": "old-1"})
    assert status == 200 and answer["translations"][0]["alignment"], answer
    assert heads["deprecation"] == "true"
    assert (
        heads["warning"].startswith("299 - ") and "write return_piece_alignment" in heads["warning"]
    ), heads
    assert {"deprecation", "warning"} <= set(
        heads["access-control-expose-headers"].lower().split(", ")
    )
    logged = [line for line in guarded.output().splitlines() if "old-1" in line]
    assert any("return_alignment is deprecated" in line for line in logged), guarded.output()
    status, heads, _ = call(url, {"src": lines[:1], "return_piece_alignment": True}, AUTH)
    assert status == 200 and "deprecation" not in heads and "warning" not in heads


def test_metrics_move_as_requests_arrive(guarded: ServerProcess, lines: list[str]) -> None:
    """One answered request of 3 lines and one refused (401) move the counters by exactly
    that: requests by route and status, errors, the latency histogram, a batch of 3 lines,
    the lines and pieces translated."""
    before = metrics(guarded.url)
    body = {"src": lines[:3], "return_scores": True}
    status, _, answer = call(guarded.url + "/v1/translate", body, AUTH)
    assert status == 200
    assert call(guarded.url + "/v1/translate", body)[0] == 401
    after = metrics(guarded.url)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    route = {"route": "/v1/translate"}
    assert moved("nmt_requests_total", **route, method="POST", status="200") == 1
    assert moved("nmt_requests_total", **route, method="POST", status="401") == 1
    assert moved("nmt_request_errors_total", **route, status="401") == 1
    assert moved("nmt_request_errors_total", **route, status="200") == 0
    assert moved("nmt_request_duration_seconds_count", **route) == 2
    assert moved("nmt_batch_lines_count", model="tiny") == 1
    assert moved("nmt_batch_lines_sum", model="tiny") == 3
    assert moved("nmt_translated_lines_total", model="tiny") == 3
    assert moved("nmt_translated_tokens_total", model="tiny", side="src") > 3
    assert moved("nmt_translated_tokens_total", model="tiny", side="tgt") > 0
    assert sample(after, "nmt_queue_lines", model="tiny") == 0
    status, _, health = call(guarded.url + "/health")
    assert status == 200 and (health["status"], health["problems"]) == ("ok", [])


def test_a_request_timed_out_while_its_batch_runs_has_its_lines_dropped(
    tiny_run: Path, lines: list[str], tmp_path: Path
) -> None:
    """256 lines with a beam of 32, in length batches of 16 tokens (a line each: some 128
    batches on each of the two workers), run far past the 1 s timeout: the client gets 504,
    and the batches not yet run leave its lines out (counted in nmt_dropped_lines_total,
    none counted as translated), so the workers are soon free again."""
    args = ["-m", f"tiny={tiny_run}", "--workers", "2", "--batch-tokens", "16"]
    args += ["--timeout-s", "1", "--max-chars", "40000"]
    with ServerProcess(args, tmp_path / "server.log") as proc:
        body = {"src": lines * 4, "beam_size": 32, "nbest": 32}
        status, _, answer = call(proc.url + "/v1/translate", body)
        assert (status, answer["error"]["code"]) == (504, "timeout"), answer
        deadline = time.monotonic() + 120
        while request(proc.url + "/health")[1]["running"]:
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        after = metrics(proc.url)
        assert sample(after, "nmt_dropped_lines_total", model="tiny") > 0
        assert sample(after, "nmt_translated_lines_total", model="tiny") == 0
        assert sample(after, "nmt_requests_total", route="/v1/translate", method="POST",
                      status="504") == 1  # fmt: skip


def test_a_full_queue_answers_503_with_retry_after(
    tiny_run: Path, lines: list[str], tmp_path: Path
) -> None:
    """--max-queue 8 lines, requests of 2 lines held by a long --max-wait-ms: once 8 lines
    wait (nmt_queue_lines says 8), the next request gets 503 and Retry-After on both APIs;
    the waiting ones time out (504) and leave the queue, which takes requests again.

    A request that finds the batcher empty runs at once (no wait), so requests are sent two
    at a time until two overlap: from then on every new one waits behind the first waiting
    one, whatever the machine's speed. One of a pair may find the queue full (503)."""
    args = ["-m", f"tiny={tiny_run}", "--workers", "2", "--max-wait-ms", "60000"]
    args += ["--max-queue", "8", "--max-lines", "8", "--timeout-s", "4"]
    with ServerProcess(args, tmp_path / "server.log") as proc, ThreadPoolExecutor(8) as pool:
        url = proc.url + "/v1/translate"
        sent = []
        deadline = time.monotonic() + 30
        while request(proc.url + "/health")[1]["queued_lines"] < 8:
            assert time.monotonic() < deadline, proc.output()
            sent += [pool.submit(call, url, {"src": lines[:2]}) for _ in range(2)]
            time.sleep(0.2)
        assert sample(metrics(proc.url), "nmt_queue_lines", model="tiny") == 8
        status, heads, answer = call(url, {"src": lines[:2]})
        assert (status, answer["error"]["code"]) == (503, "queue_full"), answer
        assert heads["retry-after"] == "1" and "--max-queue" in answer["error"]["message"]
        status, heads, answer = call(proc.url + "/translate", {"q": lines[0], "target": "en"})
        assert status == 503 and heads["retry-after"] == "1" and "busy" in answer["error"]
        statuses = [f.result(60)[0] for f in sent]
        assert statuses.count(504) == 4 and set(statuses) <= {200, 503, 504}, statuses
        assert request(proc.url + "/health")[1]["queued_lines"] == 0
        assert call(url, {"src": lines[:2]})[0] == 200
        after = metrics(proc.url)
        assert sample(after, "nmt_requests_total", route="/v1/translate", method="POST",
                      status="503") == 1 + statuses.count(503)  # fmt: skip


def test_health_is_503_once_the_server_stops_taking_work(tiny_run: Path) -> None:
    """Readiness: ok while the batchers run; 503 with the reason once they drain (what a
    load balancer needs to stop sending requests during a shutdown)."""
    from nmt.serve.registry import load_models

    models = load_models([f"tiny={tiny_run}"], "torch", "cpu")
    with serving(models, workers=2) as client:
        answer = client.get("/health")
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        models["tiny"].batcher.drain()  # type: ignore[union-attr]
        answer = client.get("/health")
        assert answer.status_code == 503
        assert answer.json()["status"] == "unavailable"
        assert answer.json()["problems"] == ["tiny: shutting down"]


def test_an_internal_error_answers_the_request_id_not_the_exception(
    tiny_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In process (a real server cannot be made to fail on purpose): a search that raises
    answers 500 with a generic message naming the request id, on both APIs, never the
    exception's text; the log has the traceback under that id; the server goes on."""
    from nmt.serve.registry import ServedModel, load_models

    caplog.set_level(logging.INFO, logger="uvicorn.error")  # the access lines
    models = load_models([f"tiny={tiny_run}"], "torch", "cpu")
    calls: list[int] = []

    def fail_every_other(options: Any, works: list[Any]) -> Any:
        calls.append(len(works))
        if len(calls) % 2:
            raise RuntimeError("device lost at /secret/path")
        return ServedModel.run(models["tiny"], options, works)

    models["tiny"].run = fail_every_other  # type: ignore[method-assign]
    with serving(models, workers=2) as client:
        answer = client.post("/v1/translate", json={"src": ["Ein Hund."]})
        rid = answer.headers["x-request-id"]
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "internal"
        message = answer.json()["error"]["message"]
        assert rid in message and "secret" not in message and "RuntimeError" not in message
        assert client.post("/v1/translate", json={"src": ["Ein Hund."]}).status_code == 200
        answer = client.post("/translate", json={"q": "Ein Hund.", "target": "en"}, headers={
            "X-Request-ID": "lt-500"
        })  # fmt: skip
        assert answer.status_code == 500 and "lt-500" in answer.json()["error"]
        assert "secret" not in answer.json()["error"]
    logged = [r for r in caplog.records if r.name == "uvicorn.error" and r.exc_info]
    assert [rid in r.getMessage() for r in logged] == [True, False]
    assert "lt-500" in logged[1].getMessage()
    assert all("device lost" in str(r.exc_info[1]) for r in logged)  # type: ignore[index]
    access = [r.getMessage() for r in caplog.records if "request_id=" in r.getMessage()]
    assert any(" 500 " in m and f"request_id={rid}" in m for m in access)


def test_the_ctranslate2_engine_runs_one_batch_per_worker(tiny_run: Path, tmp_path: Path) -> None:
    """Served with --workers 2, a CTranslate2 model runs two batches at once (its
    inter_threads), as the batcher hands it one per worker; it ran them one at a time."""
    pytest.importorskip("ctranslate2", reason="nmt[ctranslate2]")
    from nmt.interop.export import export_ctranslate2
    from nmt.serve.registry import load_models

    exported = export_ctranslate2(tiny_run, tmp_path / "ct2")
    for workers in (1, 2):
        models = load_models([f"m={exported}"], "ctranslate2", "cpu", 4096, workers)
        assert models["m"].translator.translator.num_translators == workers  # type: ignore[attr-defined]


def test_libretranslate_auto_html_and_alternatives(tiny_run: Path, lines: list[str]) -> None:
    """In process. ``source: auto`` is the model's source language, answered with confidence
    0 (assumed, not detected), and a 400 when several source languages translate into the
    target; ``format: html`` is a 400 saying so; ``alternatives: N`` answers the next-best
    distinct translations of the n-best list (what /v1/translate's nbest gives)."""
    from nmt.serve.registry import load_models

    models = load_models([f"tiny={tiny_run}"], "torch", "cpu")
    with serving(models, workers=2) as client:
        lt = {"q": lines[0], "source": "auto", "target": "en"}
        answer = client.post("/translate", json=lt).json()
        assert answer["detectedLanguage"] == {"confidence": 0.0, "language": "de"}
        answer = client.post("/translate", json={**lt, "format": "html"})
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("format: html is not supported")
        assert client.post("/translate", json={**lt, "format": "text"}).status_code == 200
        nbest = client.post(
            "/v1/translate", json={"src": lines[:2], "beam_size": 5, "nbest": 4}
        ).json()["translations"]
        answer = client.post("/translate", json={**lt, "q": lines[:2], "alternatives": 3}).json()
        for text, alternatives, t in zip(answer["translatedText"], answer["alternatives"], nbest):
            texts = [h["text"] for h in t["nbest"]]
            assert text == texts[0]
            assert alternatives == list(dict.fromkeys(x for x in texts[1:] if x != texts[0]))
        form = urlencode({"q": lines[0], "target": "en", "alternatives": "2"}).encode()
        answer = client.post(
            "/translate",
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ).json()
        assert isinstance(answer["alternatives"], list) and len(answer["alternatives"]) <= 2
        for bad in (-1, 32, "many", True):
            answer = client.post("/translate", json={**lt, "alternatives": bad})
            assert answer.status_code == 400 and "alternatives: " in answer.json()["error"]
        # A model that translates fr and de into en (pairs as a multilingual model's): auto
        # cannot know which is meant.
        models["tiny"].pairs.append(("fr", "en"))
        answer = client.post("/translate", json=lt)
        assert answer.status_code == 400
        assert "source: auto is not supported for target en" in answer.json()["error"]
        assert "de, fr" in answer.json()["error"]
