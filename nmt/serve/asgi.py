"""What ``nmt serve``'s ASGI middlewares share (:mod:`nmt.serve.body`,
:mod:`nmt.serve.context`): the ASGI types, :class:`HttpMiddleware` (HTTP requests handled,
anything else passed through) and :func:`send_error`, an error answer in the route's format
(LibreTranslate's ``{"error": message}`` on its routes, ``{"error": {"code", "message"}}``
elsewhere). Starlette-free, so that it loads without the ``serve`` extra's packages.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

LIBRETRANSLATE_ROUTES = ("/translate", "/languages")


class HttpMiddleware:
    """An ASGI middleware over ``app`` that handles HTTP requests (:meth:`handle`, which a
    subclass writes) and passes anything else (lifespan, websockets) through untouched."""

    def __init__(self, app: App):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer (or pass on) one HTTP request."""
        raise NotImplementedError


async def send_error(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """Send a JSON error answer of ``status`` in the format of the route of ``scope``
    (``code`` is left out on LibreTranslate's routes, whose errors carry the message alone)."""
    payload: dict[str, Any]
    if scope.get("path") in LIBRETRANSLATE_ROUTES:
        payload = {"error": message}
    else:
        payload = {"error": {"code": code, "message": message}}
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
