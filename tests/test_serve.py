"""``nmt serve`` as a client sees it: the real process on a free loopback port, real HTTP.

Outputs equal ``nmt translate``'s for requests sent one at a time (both search each line
alone, on the same threads: the same computation); under concurrent load batches differ in
shape, so answers are compared with the lone answers within a tolerance (tests/agreement.py).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from agreement import (
    BEAM_NORMALIZED_TOL,
    SAMPLE_BOUNDARY_TOL,
    SCORE_TOL,
    SamplingRecord,
    assert_beam_agree,
    found_from_answers,
    record_hypotheses,
    sample_boundary_gap,
)
from serve_client import REPO, ServerProcess, request, serving

from nmt.config import DecodeConfig
from nmt.data.tokenizer import Tokenizer
from nmt.decode.translate import Translator
from nmt.model.checkpoint import SPM_FILE, load_model

MAX_LINES, MAX_CHARS = 8, 600


@pytest.fixture(scope="module")
def server(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["-m", f"tiny={tiny_run}", "--workers", "1", "--max-wait-ms", "20"]
    args += ["--max-lines", str(MAX_LINES), "--max-chars", str(MAX_CHARS)]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with ServerProcess(args, log) as proc:
        yield proc


@pytest.fixture(scope="module")
def lines(multi30k: Callable[..., list[str]]) -> list[str]:
    return multi30k("val", "de", 16)


def translate(server: ServerProcess, src: list[str], **options: Any) -> dict[str, Any]:
    status, body = request(server.url + "/v1/translate", {"src": src, **options})
    assert status == 200, body
    return body


def test_health_models_docs_and_page(server: ServerProcess, tiny_run: Path) -> None:
    status, health = request(server.url + "/health")
    assert status == 200 and health.pop("batches") >= 0
    assert health == {
        "status": "ok", "models": ["tiny"], "queued": 0, "queued_lines": 0, "running": 0,
        "problems": [],
    }  # fmt: skip
    status, body = request(server.url + "/v1/models")
    (model,) = body["models"]
    assert (model["id"], model["src_lang"], model["tgt_lang"], model["engine"]) == (
        "tiny",
        "de",
        "en",
        "torch",
    )
    assert model["shape"]["n_decoder_layers"] == 2 and len(model["sha256"]) == 64
    status, docs = request(server.url + "/docs")  # the OpenAPI page, from nmt's own files
    assert status == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs
    assert "https://" not in docs
    status, script = request(server.url + "/static-offline-docs/swagger-ui-bundle.js")
    assert status == 200 and len(script) > 100_000
    status, redoc = request(server.url + "/redoc")
    assert status == 200 and "https://" not in redoc
    assert "/v1/translate" in request(server.url + "/openapi.json")[1]["paths"]
    status, page = request(server.url + "/")
    assert status == 200 and 'id="heatmap"' in page and "https://" not in page  # no CDN


def test_port_0_is_a_free_port_named_on_stderr_and_a_taken_one_is_refused(
    server: ServerProcess, tiny_run: Path
) -> None:
    """The fixture's server was started with --port 0: its ``listening on`` line named a
    port it answers on. Another server asked for that port exits 1 with an error naming it
    and saying to give another --port (0 takes a free one); it used to print a message
    about paths, permissions and disk space."""
    port = urlsplit(server.url).port
    assert server.url == f"http://127.0.0.1:{port}" and port != 0
    assert f"listening on {server.url} (page at /, API at /docs)" in server.output()
    cmd = [sys.executable, "-m", "cli", "serve", "-m", f"tiny={tiny_run}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    stderr = " ".join(done.stderr.split())
    assert done.returncode == 1, stderr[-2000:]
    assert f"cannot listen on --host 127.0.0.1 --port {port}: Address already in use" in stderr
    assert "give another --port (0 takes a free one)" in stderr
    assert request(server.url + "/health")[0] == 200  # the first server is untouched


def test_one_at_a_time_equals_nmt_translate(
    server: ServerProcess, tiny_run: Path, lines: list[str], tmp_path: Path
) -> None:
    """Line by line, beam 5 with 2-best, as ``nmt translate --batch-size 1 --workers 1``."""
    src = tmp_path / "src.de"
    src.write_text("\n".join(lines) + "\n")
    cli = [sys.executable, "-m", "cli", "translate", str(src), "-m", str(tiny_run)]
    cli += ["--beam-size", "5", "--nbest", "2", "--batch-size", "1", "--workers", "1"]
    done = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # n-best lines: line, rank, normalised score, log-probability, text
    expected = [row.split("\t")[1:] for row in done.stdout.splitlines()]
    got = []
    for line in lines:
        (t,) = translate(server, [line], beam_size=5, nbest=2, return_scores=True)["translations"]
        got += [[str(rank), h["score"], h["text"]] for rank, h in enumerate(t["nbest"])]
    assert [(r, text) for r, _, text in got] == [(r, text) for r, _, _, text in expected]
    for (_, score, _), (_, _, printed, _) in zip(got, expected):
        assert abs(score - float(printed)) <= 1e-4  # the log-probability, 4 decimals


def test_empty_lines_attention_and_piece_alignment(server: ServerProcess, lines: list[str]) -> None:
    """The server's alignment links piece positions, so it is called ``piece_alignment``
    (``nmt translate --alignment`` links words); the old ``return_alignment`` still gives
    the same pairs under the old name."""
    body = translate(server, ["", lines[0]], return_attention=True, return_piece_alignment=True)
    empty, t = body["translations"]
    assert empty == {"text": ""} and body["model"] == "tiny" and body["time_ms"] > 0
    att = t["attention"]
    n_layers, n_heads, tgt_len, src_len = att["shape"]
    assert (n_layers, n_heads) == (2, 4)
    assert (len(att["tgt_pieces"]), len(att["src_pieces"])) == (tgt_len, src_len)
    assert att["src_pieces"][-1] == att["tgt_pieces"][-1] == "</s>"
    for head in att["weights"][-1]:
        assert len(head) == tgt_len and all(abs(sum(row) - 1) < 1e-2 for row in head)
    assert "alignment" not in t
    pairs = [tuple(map(int, p.split("-"))) for p in t["piece_alignment"].split()]
    assert [j for _, j in pairs] == list(range(tgt_len - 1))
    assert all(0 <= i < src_len - 1 for i, _ in pairs)
    (old,) = translate(server, [lines[0]], return_alignment=True)["translations"]
    assert old["alignment"] == t["piece_alignment"] and "piece_alignment" not in old
    # With n-best, an empty line has its n-best list too (clients read t["nbest"]).
    empty, t = translate(server, ["  ", lines[0]], beam_size=3, nbest=2)["translations"]
    assert empty["nbest"] == [{"text": "", "score": 0.0}] and len(t["nbest"]) == 2


def test_libretranslate_routes(server: ServerProcess, lines: list[str]) -> None:
    url = server.url + "/translate"
    # The same lines in one request are the same batch: the same computation.
    (alone,) = [t["text"] for t in translate(server, lines[:1])["translations"]]
    best = [t["text"] for t in translate(server, lines[:2])["translations"]]
    assert request(url, {"q": lines[0], "source": "de", "target": "en"}) == (
        200,
        {"translatedText": alone},
    )
    status, body = request(url, {"q": lines[:2], "source": "auto", "target": "en"})
    assert status == 200 and body["translatedText"] == best
    assert body["detectedLanguage"]["language"] == "de"
    form = urlencode(
        {"q": f"{lines[0]}\n{lines[1]}", "source": "de", "target": "en", "api_key": "x"}
    )
    status, body = request(url, form.encode(), "application/x-www-form-urlencoded")
    assert (status, body) == (200, {"translatedText": "\n".join(best)})
    form = urlencode([("q", lines[0]), ("q", lines[1]), ("target", "en")])
    status, body = request(url, form.encode(), "application/x-www-form-urlencoded")
    assert (status, body["translatedText"]) == (200, best)
    assert request(server.url + "/languages") == (
        200,
        [{"code": "de", "name": "German", "targets": ["en"]}],
    )
    # Raw UTF-8 in a URL-encoded form (what `curl -d q='läuft'` sends) is read as UTF-8.
    umlauts = "Ein Hund läuft über die Straße."
    (expected,) = [t["text"] for t in translate(server, [umlauts])["translations"]]
    raw = f"q={umlauts}&target=en".encode()
    status, body = request(url, raw, "application/x-www-form-urlencoded")
    assert (status, body["translatedText"]) == (200, expected)
    status, body = request(url, {"q": f"{lines[0]}\r{lines[1]}", "target": "en"})  # old Mac
    assert (status, body["translatedText"]) == (200, "\n".join(best))
    status, body = request(url, b"q=%ff%fe&target=en", "application/x-www-form-urlencoded")
    assert status == 400 and "not UTF-8" in body["error"]
    for bad, message in [
        ({"q": ["a", "b\nc", "d\x00"], "target": "en"}, "q[2]: contains a line break or NUL"),
        ({"q": "x", "source": 5, "target": "en"}, "source: must be a language code"),
        ({"q": "x", "source": "de", "target": "fr"}, "de->fr is not served"),
        ({"source": "de", "target": "en"}, "q: missing"),
        ({"q": [1], "source": "de", "target": "en"}, "q: must be a text"),
        ({"q": ["x"] * (MAX_LINES + 1), "target": "en"}, "at most 8"),
    ]:
        status, body = request(url, bad)
        assert status in (400, 413) and message in body["error"], body
    status, body = request(url, b"q=x", "text/plain")
    assert status == 400 and "send JSON" in body["error"]


J = "application/json"
BAD_REQUESTS = [
    # (body, content type, status, code, text in the message)
    (b'{"src": ["a"', J, 400, "malformed_json", "body: not valid JSON"),
    (b"\xff\xfe", J, 400, "malformed_json", "body"),
    (b"hello", "text/plain", 422, "invalid_body", "body"),
    (b"[1, 2]", J, 422, "invalid_body", "body"),
    (b'{"src": "Ein Hund."}', J, 422, "invalid_field", "src: "),
    (b'{"src": ["a", 1]}', J, 422, "invalid_field", "src[1]"),
    (b'{"src": []}', J, 422, "invalid_field", "src: "),
    (b"{}", J, 422, "missing_field", "src: Field required"),
    (b'{"src": ["a"], "beam": 4}', J, 422, "unknown_field", "beam: unknown"),
    (b'{"src": ["a"], "beam_size": 0}', J, 422, "invalid_field", "beam_size"),
    (b'{"src": ["a"], "beam_size": "5"}', J, 422, "invalid_field", "beam_size"),
    (b'{"src": ["a"], "beam_size": 2, "nbest": 3}', J, 422, "invalid_field", "nbest=3"),
    (b'{"src": ["a"], "return_attention": "yes"}', J, 422, "invalid_field", "return_attention"),
    (b'{"src": ["a"], "model": "big"}', J, 404, "unknown_model", "model: 'big'"),
    (b'{"src": ["a\\nb"]}', J, 422, "invalid_text", "src[0]"),
    (b'{"src": ["a", "b\\ud800c"]}', J, 422, "invalid_text", "src[1]: character 1 is a lone"),
    (b'{"src": ["a"], "prefix": ["\\udc00"]}', J, 422, "invalid_text", "prefix[0]: character 0"),
    (b'{"src": ["a"' + b', "a"' * MAX_LINES + b"]}", J, 413, "too_many_lines", "src: 9 lines"),
    (b'{"src": ["' + b"a" * (MAX_CHARS + 1) + b'"]}', J, 413, "too_many_chars", "src: 601"),
    # Refused before pydantic reports each item or key (the event loop once stalled seconds).
    (b'{"src": [' + b"null, " * 10_000 + b"null]}", J, 413, "too_many_lines",
     "src: more than 10000"),
    (b'{"src": ["a"], ' + b"".join(b'"k%d": 0, ' % i for i in range(40)) + b'"k": 0}', J, 422,
     "unknown_field", "body: 41 unknown fields (k0, k1, k2, ...)"),
    (b'{"src": ["' + b"a" * 100_000 + b'"]}', J, 413, "too_large",
     "body: larger than 80,448 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "content_type", "status", "code", "message"), BAD_REQUESTS)
def test_bad_input_gets_its_error_and_the_server_goes_on(
    server: ServerProcess, body: bytes, content_type: str, status: int, code: str, message: str
) -> None:
    got, answer = request(server.url + "/v1/translate", body, content_type)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert message in answer["error"]["message"]
    assert request(server.url + "/v1/translate", {"src": ["Ein Hund."]})[0] == 200


def test_unknown_route_and_method(server: ServerProcess) -> None:
    status, body = request(server.url + "/v2/translate", {"src": ["a"]})
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = request(server.url + "/v1/translate")  # GET
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
    status, body = request(server.url + "/translate")  # GET, in LibreTranslate's format
    assert status == 405 and "Method Not Allowed" in body["error"]


def test_a_chunked_body_over_the_limit_gets_413(server: ServerProcess) -> None:
    """Without a Content-Length, the body is counted as it arrives; in each API's format."""
    import http.client
    import json
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    for path, chunk in (("/v1/translate", b'{"src": ["'), ("/translate", b'{"q": "')):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        parts = iter([chunk, *[b"a" * 10_000] * 10, b'"]}'])
        conn.request("POST", path, body=parts, headers={"Content-Type": J}, encode_chunked=True)
        answer = conn.getresponse()
        body = json.loads(answer.read())
        conn.close()
        assert answer.status == 413, body
        error = body["error"] if path == "/translate" else body["error"]["message"]
        assert error.startswith("body: larger than 80,448 bytes")
    assert request(server.url + "/v1/translate", {"src": ["Ein Hund."]})[0] == 200


@pytest.mark.kernels
def test_64_concurrent_clients_all_answered(
    server: ServerProcess, lines: list[str], spm_model: Path
) -> None:
    """64 clients × 10 requests (a bounded loop on 127.0.0.1): every answer arrives, and each
    agrees with the lone answer for its line as ``agreement.assert_beam_agree`` compares two
    numeric paths: the same text with the same score, or an equally good hypothesis
    (normalized score within BEAM_NORMALIZED_TOL) kept where batching changed the rounding of
    a near-tie."""
    lone = [translate(server, [line], return_scores=True)["translations"][0] for line in lines]
    tokenizer = Tokenizer(spm_model)
    answers: list[tuple[int, int, Any]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(10):
            i = (c * 10 + r) % len(lines)
            status, body = request(
                server.url + "/v1/translate", {"src": [lines[i]], "return_scores": True}
            )
            with lock:
                answers.append((i, status, body))

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(client, range(64)))
    assert len(answers) == 640 and all(status == 200 for _, status, _ in answers), [
        b for _, s, b in answers if s != 200
    ][:3]

    def found(answered: list[tuple[int, Any]]) -> Any:
        texts = [(t["text"], t["score"]) for _, t in answered]
        ids = tokenizer.encode([lines[i] for i, _ in answered])
        return found_from_answers(tokenizer, ids, texts, DecodeConfig().length_penalty)

    by_line: list[list[Any]] = [[] for _ in lines]
    for i, _, body in answers:
        by_line[i].append(body["translations"][0])
    for k in range(max(map(len, by_line))):  # each line's k-th answer against its lone one
        concurrent = [(i, a[k]) for i, a in enumerate(by_line) if len(a) > k]
        alone = found([(i, lone[i]) for i, _ in concurrent])
        assert_beam_agree(alone, found(concurrent), BEAM_NORMALIZED_TOL, SCORE_TOL)
    assert request(server.url + "/health")[1]["queued"] == 0


def test_timeout_then_sigterm_with_requests_in_flight(
    tiny_run: Path, lines: list[str], tmp_path: Path
) -> None:
    """A large --max-wait-ms holds concurrent requests in the queue: over --timeout-s they get
    504 (and the server goes on); on SIGTERM the queued ones are answered and it exits 0."""
    args = ["-m", f"tiny={tiny_run}", "--max-wait-ms", "60000", "--timeout-s", "4"]
    proc = ServerProcess(args, tmp_path / "server.log").wait_ready()
    url = proc.url + "/v1/translate"

    def burst(n: int) -> tuple[ThreadPoolExecutor, list[Any]]:
        pool = ThreadPoolExecutor(n)
        return pool, [pool.submit(request, url, {"src": [line]}) for line in lines[:n]]

    def wait_queued(n: int) -> None:
        deadline = time.monotonic() + 30
        while request(proc.url + "/health")[1]["queued"] < n:
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.05)

    try:
        pool, futures = burst(6)
        wait_queued(3)
        answers = [f.result(60) for f in futures]
        timed_out = [body for status, body in answers if status == 504]
        assert timed_out and all(status in (200, 504) for status, _ in answers), answers
        assert "--timeout-s" in timed_out[0]["error"]["message"]
        assert request(proc.url + "/health")[1]["queued"] == 0  # timed-out jobs are dropped
        pool.shutdown()

        pool, futures = burst(6)
        # SIGTERM only once every request is in the batcher or answered: one still on its
        # way would rightly get 503 (no longer accepting).
        deadline = time.monotonic() + 30
        while True:
            health = request(proc.url + "/health")[1]
            held = health["queued"] + health["running"] + sum(f.done() for f in futures)
            if held >= 6:
                break
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.05)
        assert health["queued"] >= 1  # held by --max-wait-ms: surely in flight
        proc.terminate()
        answers = [f.result(60) for f in futures]
        assert [status for status, _ in answers] == [200] * 6, answers
        assert proc.stop() == 0, proc.output()
        pool.shutdown()
    finally:
        proc.stop()


def test_a_prefix_longer_than_the_model_outputs_gets_422(tiny_run: Path) -> None:
    """Refused before it is queued, naming the prefix, as ``nmt translate --target-prefix``
    refuses it; it once reached the search, which raised (500) for every request in its
    batch."""
    from nmt.serve.registry import load_models

    models = load_models([f"tiny={tiny_run}"], "torch", "cpu")
    with serving(models) as client:
        answer = client.post(
            "/v1/translate", json={"src": ["a", "b"], "prefix": ["", "dog " * 1100]}
        )
        assert answer.status_code == 422, answer.json()
        message = answer.json()["error"]["message"]
        assert message.startswith("target prefix of line 2 ") and "at most 1023" in message
        assert (
            client.post("/v1/translate", json={"src": ["a"], "prefix": ["dog"]}).status_code == 200
        )


def test_attention_is_refused_past_its_size_limit_before_it_is_computed(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer carrying more attention weights than the limit is a 413 naming the size (a
    long line at 16-best once answered 196 MB of JSON), and no attention is computed for it
    (the size is known from the hypotheses' lengths; it was computed, per hypothesis, before
    the check); the same request without attention is answered."""
    import nmt.serve.work
    from nmt.decode.translate import Translator
    from nmt.serve.registry import load_models

    monkeypatch.setattr(nmt.serve.work, "MAX_ATTENTION_VALUES", 100)
    computed: list[int] = []  # the rows of each batched attention pass
    real = Translator.cross_attention

    def counting(self: Translator, src: list[list[int]], targets: list[list[int]]) -> Any:
        computed.append(len(src))
        return real(self, src, targets)

    monkeypatch.setattr(Translator, "cross_attention", counting)
    models = load_models([f"tiny={tiny_run}"], "torch", "cpu")
    with serving(models, workers=2) as client:
        asked = {"src": ["Ein Hund läuft."], "beam_size": 4, "nbest": 4}
        answer = client.post("/v1/translate", json={**asked, "return_attention": True})
        assert answer.status_code == 413, answer.json()
        message = answer.json()["error"]["message"]
        assert message.startswith("return_attention: ") and "at most 100 in one answer" in message
        assert computed == []
        assert client.post("/v1/translate", json=asked).status_code == 200
        answer = client.post("/v1/translate", json={**asked, "return_piece_alignment": True})
        assert answer.status_code == 200 and computed == [4]  # alignment alone: no limit


def test_sampling_and_target_prefixes_per_request(server: ServerProcess, lines: list[str]) -> None:
    """The decoding options of nmt translate reach the server per request: a seeded sample
    is the same sample again (the same request alone: the same batch); another seed draws
    other samples (against nmt translate: the next test); a prefix starts the output."""
    src = lines[:6]
    sampled = [t["text"] for t in translate(server, src, sampling_topk=0, seed=7)["translations"]]
    again = [t["text"] for t in translate(server, src, sampling_topk=0, seed=7)["translations"]]
    other = [t["text"] for t in translate(server, src, sampling_topk=0, seed=8)["translations"]]
    assert sampled == again and sampled != other
    prefixed = translate(server, src[:2], prefix=["A dog", ""], beam_size=2)["translations"]
    assert prefixed[0]["text"].startswith("A dog")
    status, body = request(server.url + "/v1/translate", {"src": src[:2], "prefix": ["A"]})
    assert status == 422 and "prefix: 1 prefixes for 2 src lines" in body["error"]["message"]


@pytest.mark.kernels
def test_a_seeded_request_draws_what_nmt_translate_draws(
    tiny_run: Path,
    multi30k: Callable[..., list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process: 24 lines sent in one request to a server of two workers (two batches of
    12) and given to ``nmt translate --seed 7`` (one batch of 24). Line i of both draws from
    the stream of ``sentence_seed(7, i)``; the samples are the same, or differ first at a
    draw within float rounding of a boundary of the distribution (the batches' shapes
    differ: agreement.SAMPLE_BOUNDARY_TOL), and identical samples score the same."""
    from typer.testing import CliRunner

    from cli.main import app
    from nmt.decode.sampling import sentence_seed
    from nmt.serve.registry import load_models

    src = multi30k("val", "de", 24)
    tokenizer = Tokenizer(tiny_run / SPM_FILE)
    ids = [tuple(x) for x in tokenizer.encode(src)]
    assert len(set(ids)) == len(ids)
    records = []
    with monkeypatch.context() as patch:
        records.append(SamplingRecord(patch))
        models = load_models([f"tiny={tiny_run}"], "torch", "cpu")
        with serving(models, workers=2) as client:
            body = {"src": src, "sampling_topk": 0, "seed": 7}
            answer = client.post("/v1/translate", json=body)
            assert answer.status_code == 200, answer.json()
    source = tmp_path / "src.de"
    source.write_text("\n".join(src) + "\n", encoding="utf-8")
    with monkeypatch.context() as patch:
        records.append(SamplingRecord(patch))
        args = ["translate", str(source), "-m", str(tiny_run), "--device", "cpu"]
        done = CliRunner().invoke(app, [*args, "--sampling-topk", "0", "--seed", "7"])
        assert done.exit_code == 0, done.output
    served, command = records
    assert [served.seeds[x] for x in ids] == [sentence_seed(7, i) for i in range(1, 25)]
    assert [command.seeds[x] for x in ids] == [served.seeds[x] for x in ids]
    model = load_model(tiny_run)[0]
    for x in ids:
        a, b = served.samples[x], command.samples[x]
        gap = sample_boundary_gap(model, list(x), served.seeds[x], a.tokens, b.tokens)
        assert gap < SAMPLE_BOUNDARY_TOL, (a.tokens, b.tokens)
        if a.tokens == b.tokens:
            assert abs(a.score - b.score) <= SCORE_TOL * (len(a.tokens) + 1)
    texts = [t["text"] for t in answer.json()["translations"]]
    assert texts == tokenizer.decode([served.samples[x].tokens for x in ids])


@pytest.mark.kernels
def test_requests_that_arrive_while_the_worker_is_busy_share_one_batch(
    tiny_run: Path, lines: list[str]
) -> None:
    """In process, one worker, held busy by a first request (an event, not a timer): eight
    one-line requests sent meanwhile queue up, and once the worker is free they are searched
    as one batch of eight lines, each answered with its own line's translation."""
    from nmt.serve.registry import load_models

    models = load_models([f"tiny={tiny_run}"], "torch", "cpu")
    served = models["tiny"]
    run, calls = served.run, []
    started, release, queued = threading.Event(), threading.Event(), threading.Event()

    def gated(options: Any, works: list[Any]) -> Any:
        calls.append(sum(len(w.ids) for w in works))
        if len(calls) == 1:
            started.set()
            assert release.wait(120), "the eight requests never queued"
        return run(options, works)

    served.run = gated  # type: ignore[method-assign]
    src = lines[:9]
    with serving(models, workers=1, max_wait_ms=0.0) as client, ThreadPoolExecutor(9) as pool:
        batcher = served.batcher
        submit_many = batcher.submit_many

        def counting(*args: Any, **kwargs: Any) -> Any:
            futures = submit_many(*args, **kwargs)
            if batcher.stats()["queued"] == len(src) - 1:
                queued.set()
            return futures

        batcher.submit_many = counting  # type: ignore[method-assign]

        def post(line: str) -> Any:
            body = {"src": [line], "beam_size": 2, "return_scores": True}
            return client.post("/v1/translate", json=body)

        first = pool.submit(post, src[0])
        assert started.wait(120)
        rest = [pool.submit(post, line) for line in src[1:]]
        assert queued.wait(120), batcher.stats()
        release.set()
        answers = [f.result() for f in [first, *rest]]
    assert calls == [1, len(src) - 1]
    assert all(a.status_code == 200 for a in answers)
    # Each answer is its own line's: compared with the line searched alone, as two numeric
    # paths (a batch of eight against a batch of one, agreement.py).
    alone = Translator.load(tiny_run, DecodeConfig(beam_size=2), device="cpu", workers=1)
    found = record_hypotheses(alone)
    assert len(list(alone.translate(src))) == len(src)
    tokenizer = Tokenizer(tiny_run / SPM_FILE)
    shared = found_from_answers(
        tokenizer,
        tokenizer.encode(src),
        [(t["text"], t["score"]) for a in answers for t in a.json()["translations"]],
        DecodeConfig().length_penalty,
    )
    assert_beam_agree(found, shared, BEAM_NORMALIZED_TOL, SCORE_TOL)


@pytest.mark.kernels
def test_a_long_request_is_split_over_the_workers(
    tiny_run: Path, multi30k: Callable[..., list[str]]
) -> None:
    """In process, two workers: a 24-line request runs as two batches of 12 consecutive
    lines (a lone long request keeps both workers busy) and answers, in order, what one batch
    does: batches of other shapes, so compared as two numeric paths (``agreement.py``)."""
    from nmt.serve.registry import load_models

    src = multi30k("val", "de", 24)
    answers, batches = [], []
    for workers in (1, 2):
        models = load_models([f"tiny={tiny_run}"], "torch", "cpu")
        calls: list[int] = []
        run = models["tiny"].run

        def recording(options: Any, works: list[Any], run: Any = run, calls: Any = calls) -> Any:
            calls.append(sum(len(w.ids) for w in works))
            return run(options, works)

        models["tiny"].run = recording  # type: ignore[method-assign]
        with serving(models, workers, 10.0) as client:
            body = {"src": src, "beam_size": 2, "return_scores": True}
            answers.append(client.post("/v1/translate", json=body).json()["translations"])
            client.post("/v1/translate", json={"src": src[:4]})
            batches.append(calls)
    assert batches == [[24, 4], [12, 12, 4]]
    tokenizer = Tokenizer(tiny_run / SPM_FILE)
    one_batch, two_batches = (
        found_from_answers(
            tokenizer,
            tokenizer.encode(src),
            [(t["text"], t["score"]) for t in answer],
            DecodeConfig().length_penalty,
        )
        for answer in answers
    )
    assert_beam_agree(one_batch, two_batches, BEAM_NORMALIZED_TOL, SCORE_TOL)


def test_a_multilingual_model_translates_into_the_language_each_request_names(
    both_ways: Path, short_pairs: tuple[list[str], list[str]]
) -> None:
    """In process, one model trained on de-en and en-de: each request's ``tgt_lang`` (or
    LibreTranslate's ``target``) picks the direction, answering what ``nmt translate
    --tgt-lang`` does; a missing or unknown target language is a 422 naming the choices."""
    from nmt.config import DecodeConfig
    from nmt.decode.translate import Translator
    from nmt.serve.registry import load_models

    de, en = short_pairs
    models = load_models([f"both={both_ways}"], "torch", "cpu")
    with serving(models) as client:
        (info,) = client.get("/v1/models").json()["models"]
        assert info["pairs"] == ["de-en", "en-de"]
        beam5 = {}
        for src, tgt_lang, ref in ((de, "en", en), (en, "de", de)):
            cli = Translator.load(both_ways, DecodeConfig(), device="cpu", tgt_lang=tgt_lang)
            beam5[tgt_lang] = [t.text for t in cli.translate(src)]
            for beam_size, expected in ((5, beam5[tgt_lang]), (1, ref)):
                body = {"src": src, "tgt_lang": tgt_lang, "beam_size": beam_size}
                answer = client.post("/v1/translate", json=body)
                assert answer.status_code == 200, answer.json()
                assert [t["text"] for t in answer.json()["translations"]] == expected
        # Greedy reproduces the pairs learned by heart: the tag alone chose the language.
        missing = client.post("/v1/translate", json={"src": de[:1]})
        assert missing.status_code == 422
        message = missing.json()["error"]["message"]
        assert "translates into de, en" in message and "tgt_lang" in message, message
        unknown = client.post("/v1/translate", json={"src": de[:1], "tgt_lang": "fr"})
        assert unknown.status_code == 422 and "not 'fr'" in unknown.json()["error"]["message"]
        lt = client.post("/translate", json={"q": en[0], "source": "en", "target": "de"})
        assert lt.json() == {"translatedText": beam5["de"][0]}
        lt = client.post("/translate", json={"q": de[1], "source": "auto", "target": "en"})
        assert lt.json() == {
            "translatedText": beam5["en"][1],
            "detectedLanguage": {"confidence": 0.0, "language": "de"},
        }
        lt = client.post("/translate", json={"q": de[0], "source": "de", "target": "fr"})
        assert lt.status_code == 400 and "de->en, en->de" in lt.json()["error"]
        languages = {x["code"]: x["targets"] for x in client.get("/languages").json()}
        assert languages == {"de": ["en"], "en": ["de"]}


def test_server_limits_are_checked_one_by_one() -> None:
    """Each bad limit is named alone, and NaN is refused (``--timeout-s nan`` answered every
    request 504 at once; ``--max-wait-ms nan`` never dispatched concurrent requests)."""
    import math

    from nmt.errors import ConfigError
    from nmt.serve.config import ServeConfig

    for bad, message in [
        ({"timeout_s": math.nan}, "timeout_s=nan must be a number > 0"),
        ({"timeout_s": 0}, "timeout_s=0 must be a number > 0"),
        ({"max_wait_ms": math.nan}, "max_wait_ms=nan must be a number >= 0"),
        ({"workers": -1}, "workers=-1 must be >= 0"),
        ({"max_lines": 10_001}, "max_lines=10001 must be at most 10000"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ServeConfig(**bad)  # type: ignore[arg-type]
    assert ServeConfig(max_chars=600, max_lines=8).max_body_bytes == 80_448
