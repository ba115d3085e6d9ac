"""The errors of ``nmt serve``'s ``/v1`` routes: ``{"error": {"code", "message"}}`` with the
field named in the message (:class:`ApiError`, :func:`error_response`), pydantic's
validation errors turned into that form (:func:`validation_message`), and the one message of
an internal error (:func:`internal_message`), which names the request id, never the
exception's text.
"""

from __future__ import annotations

from contextvars import ContextVar

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}

# The id of the request being answered (nmt.serve.context.RequestContext sets it).
request_id: ContextVar[str] = ContextVar("request_id", default="-")


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with HTTP ``status`` and
    extra response ``headers`` (e.g. ``Retry-After``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def internal_message() -> str:
    """What a 500 answers: no exception text (it can carry paths, tensors or other clients'
    input), only the request id, by which the traceback is found in the server's log."""
    return f"internal error; the server's log has its details under request id {request_id.get()}"


def validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    """``(status, code, message)`` of pydantic's first error, naming the field as a path
    (``src[2]``, ``beam_size``)."""
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    field = "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in loc).lstrip(".") or "body"
    if err.get("type") == "json_invalid":
        return 400, "malformed_json", f"body: not valid JSON ({err.get('msg', '')})"
    if err.get("type") == "too_long" and field in ("src", "prefix"):  # before --max-lines
        limit = err.get("ctx", {}).get("max_length")
        return 413, "too_many_lines", f"{field}: more than {limit} lines in one request"
    if err.get("type") == "extra_forbidden" and field == "body":
        return 422, "unknown_field", f"body: {err['msg']}"
    if field == "body":
        return 422, "invalid_body", f"body: {err['msg']}; send a JSON object"
    if err.get("type") == "extra_forbidden":
        return 422, "unknown_field", f"{field}: unknown field; see /docs for the fields"
    code = "missing_field" if err.get("type") == "missing" else "invalid_field"
    return 422, code, f"{field}: {err['msg']}"
