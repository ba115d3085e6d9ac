"""Every request of ``nmt serve`` gets an id, one log line and its count (an ASGI middleware).

:class:`RequestContext` wraps the whole app:

- the request id is the client's ``X-Request-ID`` when it is a usable one (1 to 128 visible
  ASCII characters; a proxy's or the client's own, so that one id follows a request through
  the systems it crosses) and a fresh one otherwise; it is returned in the answer's
  ``X-Request-ID`` header and available to the routes as
  :data:`nmt.serve.errors.request_id`;
- each answer is logged once, with the client, method, path, status, time and id (it
  replaces uvicorn's access log, which has no id);
- each answer is counted in :class:`nmt.serve.metrics.Metrics` (route, status, latency);
- an exception that no route answered is logged with its traceback and answered 500 with a
  generic message naming the request id (:func:`nmt.serve.errors.internal_message`), in the
  route's error format, never with the exception's text.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders

from nmt.serve.asgi import App, HttpMiddleware, Message, Receive, Scope, Send, send_error
from nmt.serve.errors import internal_message, request_id
from nmt.serve.metrics import Metrics

# uvicorn's own error log: an internal error's traceback lands beside the access lines.
log = logging.getLogger("uvicorn.error")

USABLE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # visible ASCII: safe in a header and a log


def new_request_id(sent: bytes | None) -> str:
    """The client's ``X-Request-ID`` if usable, else a fresh random one (32 hex digits)."""
    if sent is not None:
        text = sent.decode("latin-1")
        if USABLE_ID.match(text):
            return text
    return uuid.uuid4().hex


class RequestContext(HttpMiddleware):
    """ASGI middleware: request ids, the access log, request metrics and the last-resort 500.

    Args:
        app: the ASGI app to wrap (the outermost of nmt's middlewares).
        metrics: where each answer is counted.
    """

    def __init__(self, app: App, metrics: Metrics):
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = new_request_id(dict(scope.get("headers") or []).get(b"x-request-id"))
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error(
                "%s %s failed (request id %s)", scope["method"], scope["path"], rid, exc_info=exc
            )
            status = 500
            if not started:
                await send_error(scope, send_with_id, 500, "internal", internal_message())
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.request(route, scope["method"], status, seconds)
            client = scope.get("client") or ("-", 0)
            log.info(
                '%s:%s "%s %s" %d %.1f ms request_id=%s',
                client[0], client[1], scope["method"], scope["path"], status, seconds * 1000, rid,
            )  # fmt: skip
            request_id.reset(token)
