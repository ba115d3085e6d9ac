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
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from nmt.serve.config import DecodeOptions
from nmt.serve.errors import ApiError
from nmt.serve.registry import ServedModel
from nmt.serve.schema import Language, LibreTranslateError, LibreTranslateResponse
from nmt.serve.service import Service

LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "it": "Italian", "ja": "Japanese", "nl": "Dutch",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "tr": "Turkish",
    "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip


LINE_BREAK = re.compile(r"\r\n|\r|\n")  # a text's lines, translated one by one


class LTError(Exception):
    """An error answered as LibreTranslate's ``{"error": message}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_fields(request: Request) -> dict[str, Any]:
    """The request's fields from JSON or form data (a repeated form ``q`` becomes a list).

    A URL-encoded form is read as UTF-8, percent-encoded or raw (``curl -d q='läuft'`` sends
    raw bytes, which Starlette's form parser reads as Latin-1), as LibreTranslate's own
    server (Flask) does.

    Raises:
        LTError: 400 for a body that is neither a JSON object nor a form, or a form that is
            not UTF-8.
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
    if "x-www-form-urlencoded" in content_type:
        try:
            pairs = parse_qsl(
                (await request.body()).decode("utf-8"), keep_blank_values=True, errors="strict"
            )
        except UnicodeDecodeError:
            raise LTError(400, "body: the form is not UTF-8 text; send it as UTF-8") from None
        fields: dict[str, Any] = {}
        for key, value in pairs:
            fields.setdefault(key, value)
        qs: list[Any] = [value for key, value in pairs if key == "q"]
    elif "form" in content_type:  # multipart/form-data
        form = await request.form()
        fields = {k: form.get(k) for k in form}
        qs = form.getlist("q")
    else:
        raise LTError(400, "body: send JSON (application/json) or a form with q, source and target")
    if len(qs) > 1:
        fields["q"] = qs
    return fields


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
    texts = text_list(fields.get("q"))
    source, target = fields.get("source"), fields.get("target")
    source = "auto" if source in (None, "") else source
    if not isinstance(source, str):
        raise LTError(400, "source: must be a language code, or auto; see GET /languages")
    if target in (None, ""):
        raise LTError(400, "target: missing; send source and target language codes")
    if not isinstance(target, str):
        raise LTError(400, "target: must be a language code; see GET /languages")
    model, detected = pick_model(service.models, source, target)
    split = [LINE_BREAK.split(t) for t in texts]
    lines = [line for parts in split for line in parts]
    labels = [
        f"q[{i}]" if isinstance(fields["q"], list) else "q"
        for i, parts in enumerate(split)
        for _ in parts
    ]
    try:
        service.check_lines(lines, "q", labels)
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
