"""``GET /metrics``: the server's counters in Prometheus' text format (prometheus-client).

Each app has its own :class:`~prometheus_client.CollectorRegistry` (several apps in one
process, as in the tests, do not share counts). What is counted:

- ``nmt_requests_total{route, method, status}`` and ``nmt_request_errors_total{route,
  status}`` (status 400 and above), ``nmt_request_duration_seconds{route}`` (a histogram);
  ``route`` is the route's path template, ``other`` for a path no route matches, so that
  random URLs cannot grow the label set;
- ``nmt_batch_lines{model}`` and ``nmt_batch_tokens{model}``: the size of each batch as it is
  dispatched (histograms, source tokens with EOS);
- ``nmt_queue_lines{model}`` (lines waiting for a batch), ``nmt_running_batches{model}``,
  read when scraped;
- ``nmt_translated_lines_total{model}``, ``nmt_translated_tokens_total{model, side}``
  (``src``/``tgt`` pieces, EOS not counted, best hypothesis) of answered requests, and
  ``nmt_dropped_lines_total{model}``: lines of timed-out requests left out of a running batch.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from nmt.decode.results import Translation
from nmt.serve.batcher import Observe
from nmt.serve.registry import ServedModel

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LINE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384)


class ModelState(Collector):
    """What the models' batchers hold now, read at each scrape."""

    def __init__(self, models: dict[str, ServedModel]):
        self.models = models

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily("nmt_queue_lines", "Lines waiting for a batch.", labels=["model"])
        running = GaugeMetricFamily(
            "nmt_running_batches", "Batches being translated now.", labels=["model"]
        )
        dropped = CounterMetricFamily(
            "nmt_dropped_lines",
            "Lines of timed-out requests left out of a running batch.",
            labels=["model"],
        )
        for m in self.models.values():
            if m.batcher is not None:
                stats = m.batcher.stats()
                queue.add_metric([m.id], stats["queued_lines"])
                running.add_metric([m.id], stats["running"])
            dropped.add_metric([m.id], m.dropped_lines)
        yield from (queue, running, dropped)


class Metrics:
    """The counters of one app, in their own registry."""

    def __init__(self, models: dict[str, ServedModel]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "nmt_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.errors = Counter(
            "nmt_request_errors", "HTTP answers of status 400 and above.", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "nmt_request_duration_seconds", "Time from request to answer, seconds.", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_lines = Histogram(
            "nmt_batch_lines", "Lines per dispatched batch.", ["model"], buckets=LINE_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "nmt_batch_tokens", "Source tokens (EOS counted) per dispatched batch.", ["model"],
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.lines = Counter(
            "nmt_translated_lines", "Lines translated and answered.", ["model"], registry=r
        )
        self.tokens = Counter(
            "nmt_translated_tokens", "Pieces translated and answered (EOS not counted).",
            ["model", "side"], registry=r,
        )  # fmt: skip
        r.register(ModelState(models))

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(route, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch_observer(self, model_id: str) -> Observe:
        """The batcher's ``observe(lines, tokens)`` for ``model_id``."""
        lines, tokens = self.batch_lines.labels(model_id), self.batch_tokens.labels(model_id)

        def observe(n_lines: int, n_tokens: int) -> None:
            lines.observe(n_lines)
            tokens.observe(n_tokens)

        return observe

    def translated(self, model_id: str, results: list[Translation]) -> None:
        """Count the lines of one answered request and the pieces of their best outputs."""
        self.lines.labels(model_id).inc(len(results))
        src = sum(len(r.src_tokens) for r in results if r.tokens)
        tgt = sum(len(r.tokens[0]) for r in results if r.tokens)
        self.tokens.labels(model_id, "src").inc(src)
        self.tokens.labels(model_id, "tgt").inc(tgt)

    def exposition(self) -> tuple[bytes, str]:
        """The text format's body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
