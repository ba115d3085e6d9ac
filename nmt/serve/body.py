"""A limit on the size of request bodies for ``nmt serve`` (an ASGI middleware).

Neither uvicorn nor Starlette bounds a request body: a 200 MB JSON body was read and parsed
(the server's memory doubled, the event loop stalled five seconds) before ``--max-chars``
could refuse it. :class:`BodyLimit` answers 413 as soon as the declared ``Content-Length``,
or the bytes received so far (chunked uploads), pass the limit, in the error format of the
route (LibreTranslate's ``{"error": message}`` on its routes, ``{"error": {"code",
"message"}}`` elsewhere).
"""

from __future__ import annotations

from nmt.serve.asgi import App, HttpMiddleware, Message, Receive, Scope, Send, send_error


class BodyLimit(HttpMiddleware):
    """ASGI middleware: HTTP requests whose body is larger than ``limit`` bytes get 413.

    A body with a declared ``Content-Length`` is judged by it (the server's HTTP parser holds
    the client to it); one without (chunked) is read here up to the limit and handed on whole.

    Args:
        app: the ASGI app to wrap.
        limit: the largest body accepted, bytes
            (:attr:`nmt.serve.config.ServeConfig.max_body_bytes`).
    """

    def __init__(self, app: App, limit: int):
        super().__init__(app)
        self.limit = limit

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                await self.refuse(scope, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self.refuse(scope, send)
                return
            if not message.get("more_body"):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return whole

        await self.app(scope, replay, send)

    async def refuse(self, scope: Scope, send: Send) -> None:
        """Send the 413 answer, in the route's error format."""
        message = (
            f"body: larger than {self.limit:,} bytes; send fewer lines or characters "
            "(--max-lines, --max-chars)"
        )
        await send_error(scope, send, 413, "too_large", message)
