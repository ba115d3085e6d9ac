"""API keys for ``nmt serve --api-key-file``: which key a request presents, and whether it
is one of the server's.

A key travels in ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (and, on
LibreTranslate's route, in its ``api_key`` field). Keys are compared in constant time
(:func:`hmac.compare_digest`), so that the time of a refusal says nothing of how much of a
key was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from nmt.serve.errors import ApiError


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in ``Authorization: Bearer KEY`` or ``X-API-Key``, if any (header names in
    any case, as Starlette's ``Headers`` gives them)."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def check_api_key(keys: frozenset[str], key: str | None, field: str) -> None:
    """Accept ``key`` when it is one of ``keys`` (or when the server has none).

    Args:
        field: how the client sends a key, for the message.

    Raises:
        ApiError: 401 ``missing_api_key`` without a key, 403 ``invalid_api_key`` for a key
            not among ``keys``.
    """
    if not keys:
        return
    if not key:
        raise ApiError(401, "missing_api_key", f"this server needs an API key: send {field}")
    given = key.encode("utf-8", "surrogatepass")
    if not any(hmac.compare_digest(given, k.encode()) for k in keys):  # noqa: SIM110
        raise ApiError(403, "invalid_api_key", "the API key is not valid for this server")
