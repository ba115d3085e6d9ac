"""``nmt serve``: the HTTP app (FastAPI) and the server that runs it (uvicorn).

Routes: ``GET /`` (the web page, ``nmt/serve/static/index.html``), ``GET /health``
(readiness), ``GET /metrics`` (Prometheus, :mod:`nmt.serve.metrics`), ``GET /v1/models``,
``POST /v1/translate``, the LibreTranslate-compatible ``POST /translate`` and ``GET
/languages`` (:mod:`nmt.serve.libretranslate`), and the OpenAPI page at ``/docs``. Requests
are translated through each model's dynamic batcher (:mod:`nmt.serve.registry`,
:mod:`nmt.serve.batcher`).

Every answer carries the request's id (``X-Request-ID``, :mod:`nmt.serve.context`). With API
keys (``--api-key-file``), the translation routes need one: ``Authorization: Bearer KEY`` or
``X-API-Key: KEY`` (LibreTranslate's ``api_key`` field too); 401 without, 403 for a wrong
one. ``--cors-origin`` lets pages of those origins call the API (Starlette's CORS middleware).

Errors: every ``/v1`` error is ``{"error": {"code", "message"}}`` with the field named in the
message: 400 malformed JSON, 401/403 no or a wrong API key, 422 a wrong type or value, 404 an
unknown model or route, 413 too many lines or characters, 503 queue full (with
``Retry-After``) or shutting down, 504 over ``timeout_s``, 500 an internal error (a generic
message with the request id; the traceback goes to the log, and the server keeps serving).
On SIGTERM the server stops accepting connections, runs what is queued without waiting for
companions, answers the requests in flight and exits.

FastAPI, uvicorn, fastapi-offline (the ``/docs`` page's files, served by nmt rather than a
CDN) and prometheus-client are the optional ``serve`` extra; importing this module without
them raises :class:`~nmt.errors.MissingDependencyError` saying how to install them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

from nmt.errors import ConfigError, MissingDependencyError

try:
    import prometheus_client  # noqa: F401 - checked here, used by nmt.serve.metrics
    import uvicorn
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from starlette.exceptions import HTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        f"nmt serve needs FastAPI, uvicorn, fastapi-offline and prometheus-client ({exc.name} "
        "is missing): pip install 'nmt[serve]'"
    ) from None

from nmt import __version__
from nmt.serve import work as work_limits
from nmt.serve.answer import translation_out
from nmt.serve.asgi import LIBRETRANSLATE_ROUTES
from nmt.serve.auth import check_api_key, presented_key
from nmt.serve.body import BodyLimit
from nmt.serve.config import ServeConfig
from nmt.serve.context import RequestContext
from nmt.serve.errors import (
    STATUS_CODES,
    ApiError,
    error_response,
    request_id,
    validation_message,
)
from nmt.serve.metrics import Metrics
from nmt.serve.registry import ServedModel
from nmt.serve.schema import (
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    ModelsResponse,
    TranslateRequest,
    TranslateResponse,
)
from nmt.serve.service import Service
from nmt.serve.work import AttentionTooLargeError, check_attention_size

# uvicorn's own error log: an internal error's traceback lands beside its access line.
log = logging.getLogger("uvicorn.error")


LISTEN_BACKLOG = 2048  # connections waiting to be accepted (uvicorn's default)


KEY_FIELDS = "Authorization: Bearer KEY or X-API-Key: KEY"


def create_app(models: dict[str, ServedModel], cfg: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``models`` (their batchers started:
    :func:`nmt.serve.registry.start_batchers`); the batchers report their batches' sizes
    to the app's metrics from now on."""
    from nmt.serve.libretranslate import add_libretranslate_routes

    metrics = Metrics(models)
    for m in models.values():
        if m.batcher is not None:
            m.batcher.observe = metrics.batch_observer(m.id)
    service = Service(models, cfg or ServeConfig(), metrics)
    # /docs and /redoc from files nmt serves: FastAPI's own pages load theirs from a CDN and
    # stay blank offline (FastAPIOffline is FastAPI with those two pages replaced).
    app = FastAPIOffline(
        title="nmt serve",
        version=__version__,
        description="Neural machine translation: REST API, LibreTranslate-compatible routes "
        "and a web page that shows cross-attention.",
    )
    app.state.metrics = metrics
    # Added innermost first: CORS answers preflights and adds its headers to every answer,
    # the 413 of BodyLimit included; RequestContext, outermost, sees every answer.
    app.add_middleware(BodyLimit, limit=service.cfg.max_body_bytes)
    if service.cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(service.cfg.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "Deprecation", "Warning"],
        )
    app.add_middleware(RequestContext, metrics=metrics)
    errors: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 422, 500, 503, 504)
    }

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 400:  # FastAPI could not decode the body (e.g. not UTF-8)
            return error_response(400, "malformed_json", f"body: {exc.detail}; send UTF-8 JSON")
        message = f"{request.url.path}: {exc.detail}"
        if request.url.path in LIBRETRANSLATE_ROUTES:  # e.g. GET /translate: their format
            return JSONResponse({"error": message}, status_code=exc.status_code)
        return error_response(exc.status_code, code, message)

    async def api_key(request: Request) -> None:
        check_api_key(service.cfg.api_keys, presented_key(request.headers), KEY_FIELDS)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("nmt.serve").joinpath("static/index.html").read_text())

    @app.get("/health", responses={503: {"model": HealthResponse}})
    async def health() -> JSONResponse:
        """Readiness: 200 when every model has a running batcher (loaded, its dispatcher
        and worker pool alive, not shutting down), else 503 with the reasons."""
        problems = []
        stats = []
        for m in models.values():
            if m.batcher is None:
                problems.append(f"{m.id}: not started")
                continue
            stats.append(m.batcher.stats())
            if stats[-1]["draining"]:
                problems.append(f"{m.id}: shutting down")
            elif not stats[-1]["alive"]:
                problems.append(f"{m.id}: its batcher has stopped")
        answer = HealthResponse(
            status="unavailable" if problems else "ok",
            models=list(models),
            queued=sum(s["queued"] for s in stats),
            queued_lines=sum(s["queued_lines"] for s in stats),
            running=sum(s["running"] for s in stats),
            batches=sum(s["batches"] for s in stats),
            problems=problems,
        )
        return JSONResponse(answer.model_dump(), status_code=503 if problems else 200)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", dependencies=[Depends(api_key)])
    async def list_models() -> ModelsResponse:
        return ModelsResponse(
            models=[
                ModelInfo(
                    id=m.id,
                    src_lang=m.src_lang,
                    tgt_lang=m.tgt_lang,
                    pairs=[f"{src}-{tgt}" for src, tgt in m.pairs],
                    engine=m.engine,
                    shape=m.shape,
                    sha256=m.sha256,
                )
                for m in models.values()
            ]
        )

    @app.post(
        "/v1/translate",
        response_model_exclude_none=True,
        responses=errors,
        dependencies=[Depends(api_key)],
    )
    async def translate(req: TranslateRequest, response: Response) -> TranslateResponse:
        """Translate ``src`` line by line; dynamic batching shares the search with concurrent
        requests that use the same decoding options. A deprecated field is answered as
        before, with ``Deprecation`` and ``Warning`` headers and a line in the log."""
        start = time.perf_counter()
        for message in req.deprecations():
            response.headers["Deprecation"] = "true"
            response.headers.append("Warning", f'299 - "{message}"')
            log.warning("%s (request id %s)", message, request_id.get())
        model = service.model(req.model)
        service.check_lines(req.src, "src")
        attention = req.return_attention or req.return_piece_alignment or req.return_alignment
        if attention and model.engine != "torch":
            raise ApiError(
                422,
                "invalid_field",
                f"return_attention/return_piece_alignment: model {model.id!r} runs on "
                f"{model.engine}; attention needs the torch engine",
            )
        if req.prefix is not None:
            service.check_lines(req.prefix, "prefix")
        results = await service.translate(
            model,
            req.src,
            req.options(),
            attention,
            req.prefix,
            req.seed,
            req.tgt_lang,
            req.return_attention,
        )
        if req.return_attention:  # the parts of a split request were checked each alone
            values = sum(a.weights.numel() for r in results for a in r.attention or [])
            try:
                check_attention_size(values, work_limits.MAX_ATTENTION_VALUES)
            except AttentionTooLargeError as exc:
                raise ApiError(413, "too_much_attention", str(exc)) from None
        return TranslateResponse(
            translations=[translation_out(r, req, model) for r in results],
            model=model.id,
            time_ms=round((time.perf_counter() - start) * 1000, 3),
        )

    add_libretranslate_routes(app, service)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose exit signal (SIGTERM, SIGINT) also drains the batchers: queued
    requests run at once instead of waiting for companions, while uvicorn stops accepting
    connections and waits for the requests in flight."""

    def __init__(self, config: uvicorn.Config, models: dict[str, ServedModel]):
        super().__init__(config)
        self.models = models

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's signal capture, without raising the signal again after a graceful
        shutdown (it would kill the process: exit status 143 instead of 0)."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: Any) -> None:
        for m in self.models.values():
            if m.batcher is not None:
                m.batcher.drain()
        super().handle_exit(sig, frame)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` and listening; ``port`` 0 takes a free port,
    which ``sock.getsockname()[1]`` then gives. Binding here, before uvicorn starts, is what
    lets ``nmt serve --port 0`` say which port it has without a race: a port found free and
    released would be free for anyone until the server bound it.

    Raises:
        ConfigError: the address is in use or cannot be had (a host that does not resolve or
            is not this machine's), naming ``host`` and ``port``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)  # connections wait in the backlog until uvicorn accepts
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot listen on host={host} port={port}: {reason}; give another --port (0 takes "
            "a free one) or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def server_url(host: str, sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a socket from :func:`listen` (``[HOST]`` for IPv6), with the
    host as given and the port the socket has."""
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(
    models: dict[str, ServedModel],
    cfg: ServeConfig,
    log_level: str = "info",
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve ``models`` until SIGTERM/SIGINT, then finish the requests in flight and return.

    Args:
        models: the loaded models (:func:`nmt.serve.registry.load_models`).
        cfg: where to listen (``port`` 0: a free port) and the batching limits.
        log_level: uvicorn's log level.
        on_listening: called with ``http://HOST:PORT`` once the port is bound and listening
            (the port chosen when ``cfg.port`` is 0), before the first request is accepted.

    Raises:
        ConfigError: the address is in use or cannot be had (before any batcher starts).
    """
    from nmt.serve.registry import start_batchers

    sock = listen(cfg.host, cfg.port)
    try:
        pool = start_batchers(models, cfg.workers, cfg.batch_tokens, cfg.max_wait_ms, cfg.max_queue)
        app = create_app(models, cfg)
        port = sock.getsockname()[1]
        # No uvicorn access log: RequestContext logs each request once, with its id.
        config = uvicorn.Config(
            app,
            host=cfg.host,
            port=port,
            log_level=log_level,
            backlog=LISTEN_BACKLOG,
            access_log=False,
        )
        if on_listening is not None:
            on_listening(server_url(cfg.host, sock))
        try:
            DrainingServer(config, models).run(sockets=[sock])
        finally:
            for m in models.values():
                if m.batcher is not None:
                    m.batcher.close(timeout=cfg.timeout_s)
            pool.shutdown(wait=True)
    finally:
        sock.close()
