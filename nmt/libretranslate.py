"""LibreTranslate-compatible routes, so that its clients and plugins work unchanged.

``POST /translate`` takes ``{"q": text or [texts], "source", "target"}`` as JSON or as a form
(``application/x-www-form-urlencoded`` or ``multipart/form-data``; ``q`` may repeat) and
answers ``{"translatedText": text or [texts]}``; ``source: "auto"`` means the source language
of a model that translates into ``target`` (answered with ``detectedLanguage``, as
LibreTranslate does). A text of several lines is translated line by line. Other fields that
clients send (``api_key``, ``format``, ``alternatives``) are accepted and ignored. Errors are
LibreTranslate's ``{"error": "message"}`` (400 bad input, 404 no such language pair, 413 too
much text, 504 timeout, 500 internal). ``GET /languages`` lists the served pairs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from nmt.registry import DecodeOptions, ServedModel
from nmt.serve_schema import Language, LibreTranslateError, LibreTranslateResponse

if TYPE_CHECKING:
    from nmt.serve import Service

LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "it": "Italian", "ja": "Japanese", "nl": "Dutch",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "tr": "Turkish",
    "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip


class LTError(Exception):
    """An error answered as LibreTranslate's ``{"error": message}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_fields(request: Request) -> dict[str, Any]:
    """The request's fields from JSON or form data (a repeated form ``q`` becomes a list).

    Raises:
        LTError: 400 for a body that is neither a JSON object nor a form.
    """
    content_type = request.headers.get("content-type", "")
    if "json" in content_type:
        try:
            data = await request.json()
        except ValueError:
            raise LTError(400, "body: not valid JSON") from None
        if not isinstance(data, dict):
            raise LTError(400, "body: send a JSON object with q, source and target")
        return data
    if "form" in content_type:
        form = await request.form()
        fields: dict[str, Any] = {k: form.get(k) for k in form}
        qs = form.getlist("q")
        if len(qs) > 1:
            fields["q"] = qs
        return fields
    raise LTError(400, "body: send JSON (application/json) or a form with q, source and target")


def pick_model(models: dict[str, ServedModel], source: str, target: str) -> tuple[ServedModel, str]:
    """The first model translating ``source`` (``auto``: any) into ``target``, and the
    source language of that pair.

    Raises:
        LTError: 400 when no model serves the pair.
    """
    for m in models.values():
        for src, tgt in m.pairs:
            if tgt == target and source in ("auto", src):
                return m, src
    pairs = ", ".join(f"{src}->{tgt}" for m in models.values() for src, tgt in m.pairs)
    raise LTError(400, f"{source}->{target} is not served (served: {pairs}); see GET /languages")


def text_list(q: Any) -> list[str]:
    """``q`` as a list of texts.

    Raises:
        LTError: 400 for a missing ``q`` or one that is not text.
    """
    if q is None:
        raise LTError(400, "q: missing; send the text to translate")
    texts = q if isinstance(q, list) else [q]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise LTError(400, "q: must be a text or a non-empty list of texts")
    return texts


async def lt_translate(service: Service, fields: dict[str, Any]) -> dict[str, Any]:
    """Translate LibreTranslate's fields; each text is split into lines and joined back.

    Raises:
        LTError: bad input (400), too much text (413), timeout (504), internal (500).
    """
    from nmt.serve import ApiError

    texts = text_list(fields.get("q"))
    source, target = fields.get("source") or "auto", fields.get("target")
    if not isinstance(target, str) or not isinstance(source, str):
        raise LTError(400, "target: missing; send source and target language codes")
    model, detected = pick_model(service.models, source, target)
    split = [t.split("\n") for t in texts]
    lines = [line.rstrip("\r") for parts in split for line in parts]
    try:
        service.check_lines(lines, "q")
        results = await service.translate(
            model, lines, DecodeOptions(), attention=False, tgt_lang=target
        )
    except ApiError as exc:
        raise LTError(exc.status if exc.status != 422 else 400, exc.message) from None
    out, start = [], 0
    for parts in split:
        out.append(
            "\n".join(r.hyps[0].text if r.hyps else "" for r in results[start:][: len(parts)])
        )
        start += len(parts)
    answer: dict[str, Any] = {"translatedText": out if isinstance(fields["q"], list) else out[0]}
    if source == "auto":
        answer["detectedLanguage"] = {"confidence": 100.0, "language": detected}
    return answer


def add_libretranslate_routes(app: FastAPI, service: Service) -> None:
    """Register ``POST /translate`` and ``GET /languages`` on ``app``."""
    errors: dict[int | str, dict[str, Any]] = {
        s: {"model": LibreTranslateError} for s in (400, 413, 500, 504)
    }

    @app.post("/translate", response_model=LibreTranslateResponse, responses=errors)
    async def translate(request: Request) -> Any:
        """LibreTranslate-compatible translation (JSON or form: q, source, target)."""
        try:
            answer = await lt_translate(service, await read_fields(request))
        except LTError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except Exception as exc:  # answered, and the server goes on
            logging.getLogger("uvicorn.error").error("POST /translate failed", exc_info=exc)
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)
        return JSONResponse(answer)

    @app.get("/languages")
    async def languages() -> list[Language]:
        """LibreTranslate-compatible list of source languages and their targets."""
        targets: dict[str, list[str]] = {}
        for m in service.models.values():
            for src, tgt in m.pairs:
                targets.setdefault(src, [])
                if tgt not in targets[src]:
                    targets[src].append(tgt)
        return [
            Language(code=c, name=LANGUAGE_NAMES.get(c, c), targets=t) for c, t in targets.items()
        ]
