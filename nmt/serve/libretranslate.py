"""LibreTranslate-compatible routes, so that its clients and plugins work unchanged.

``POST /translate`` takes ``{"q": text or [texts], "source", "target"}`` as JSON or as a form
(``application/x-www-form-urlencoded`` or ``multipart/form-data``; ``q`` may repeat) and
answers ``{"translatedText": text or [texts]}``. A text of several lines is translated line
by line. Errors are LibreTranslate's ``{"error": "message"}`` (400 bad input, 401/403 no or a
wrong API key, 413 too much text, 503 busy with ``Retry-After``, 504 timeout, 500 internal).
``GET /languages`` lists the served pairs. The other fields:

- ``source: "auto"``: nmt detects no language. When the served models translate into
  ``target`` from one source language only, that language is used and answered as
  ``detectedLanguage`` with ``confidence: 0`` (assumed, not detected: LibreTranslate's 100
  would claim a detection); when several could be meant, 400 asks for ``source``.
- ``format``: ``text`` (the default); ``html`` is refused with 400. Markup cannot go through
  the model (the tags come back as garbled text), and translating the text between tags
  piece by piece breaks the sentences it cuts (``Ein <b>Hund</b> läuft.`` would be three
  translations of fragments); carrying tags across by the attention's alignment is only as
  good as that alignment, and not available on the CTranslate2 engine.
- ``alternatives: N``: the N next-best distinct translations from the beam's n-best list
  (beam widened to N + 1 when needed), as ``alternatives`` (a list per text for a list ``q``).
- ``api_key``: checked against ``--api-key-file`` (a header works too); ignored without one.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from nmt.decode.results import Translation
from nmt.serve.auth import check_api_key, presented_key
from nmt.serve.config import DecodeOptions
from nmt.serve.errors import ApiError, internal_message, request_id
from nmt.serve.registry import ServedModel
from nmt.serve.schema import MAX_BEAM, Language, LibreTranslateError, LibreTranslateResponse
from nmt.serve.service import Service

LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "it": "Italian", "ja": "Japanese", "nl": "Dutch",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "tr": "Turkish",
    "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip


LINE_BREAK = re.compile(r"\r\n|\r|\n")  # a text's lines, translated one by one


class LTError(Exception):
    """An error answered as LibreTranslate's ``{"error": message}`` with HTTP ``status`` and
    extra response ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


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
    """The first model translating ``source`` into ``target``, and the source language of
    that pair. ``auto`` is the one source language that the models translate into
    ``target`` from (nothing is detected).

    Raises:
        LTError: 400 when no model serves the pair, or for ``auto`` when several source
            languages translate into ``target``.
    """
    if source == "auto":
        sources = {src for m in models.values() for src, tgt in m.pairs if tgt == target}
        if len(sources) > 1:
            raise LTError(
                400,
                f"source: auto is not supported for target {target}: nmt detects no "
                f"language, and {', '.join(sorted(sources))} all translate into {target}; "
                "send the source language",
            )
    for m in models.values():
        for src, tgt in m.pairs:
            if tgt == target and source in ("auto", src):
                return m, src
    pairs = ", ".join(f"{src}->{tgt}" for m in models.values() for src, tgt in m.pairs)
    raise LTError(400, f"{source}->{target} is not served (served: {pairs}); see GET /languages")


def decode_options(fields: dict[str, Any]) -> tuple[DecodeOptions, int]:
    """The search for LibreTranslate's fields, and the ``alternatives`` asked for: the
    default beam, widened to hold the best and ``alternatives`` more.

    Raises:
        LTError: 400 for a ``format`` other than text, or ``alternatives`` that is not a
            whole number from 0 to ``MAX_BEAM - 1``.
    """
    fmt = fields.get("format")
    if fmt not in (None, "", "text"):
        message = "format: must be text or html" if fmt != "html" else (
            "format: html is not supported; send the text without markup (format text): "
            "tags cannot go through the model, and the pieces of text between tags are not "
            "sentences"
        )  # fmt: skip
        raise LTError(400, message)
    n = fields.get("alternatives", 0)
    if isinstance(n, str) and n.strip().isdigit():  # a form sends text
        n = int(n)
    if n in (None, ""):
        n = 0
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < MAX_BEAM:
        raise LTError(400, f"alternatives: must be a whole number from 0 to {MAX_BEAM - 1}")
    default = DecodeOptions()
    if n == 0:
        return default, 0
    return DecodeOptions(beam_size=max(default.beam_size, n + 1), nbest=n + 1), n


def joined_texts(results: list[Translation], split: list[list[str]], rank: int) -> list[str]:
    """Each text's lines joined back, from each line's ``rank``-th hypothesis (its best when
    it has fewer)."""
    out, start = [], 0
    for parts in split:
        lines = results[start : start + len(parts)]
        out.append(
            "\n".join(r.nbest[min(rank, len(r.nbest) - 1)][0] if r.nbest else r.text for r in lines)
        )
        start += len(parts)
    return out


def alternatives_of(results: list[Translation], split: list[list[str]], n: int) -> list[list[str]]:
    """Up to ``n`` alternatives of each text: the texts made of the lines' 2nd, 3rd...
    hypotheses, without repeats (pieces that detokenize alike) or the translation itself."""
    ranked = [joined_texts(results, split, rank) for rank in range(n + 1)]
    out = []
    for i in range(len(split)):
        seen, alts = {ranked[0][i]}, []
        for texts in ranked[1:]:
            if texts[i] not in seen:
                seen.add(texts[i])
                alts.append(texts[i])
        out.append(alts)
    return out


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


async def lt_translate(
    service: Service, fields: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    """Translate LibreTranslate's fields; each text is split into lines and joined back.
    ``key``: the API key of the request's headers (the ``api_key`` field goes first).

    Raises:
        LTError: bad input (400), no or a wrong API key (401/403), too much text (413),
            busy (503), timeout (504), internal (500).
    """
    try:
        field_key = fields.get("api_key")
        check_api_key(
            service.cfg.api_keys,
            field_key if isinstance(field_key, str) and field_key else key,
            "the api_key field, or an Authorization: Bearer KEY or X-API-Key header",
        )
    except ApiError as exc:
        raise LTError(exc.status, exc.message) from None
    texts = text_list(fields.get("q"))
    source, target = fields.get("source"), fields.get("target")
    source = "auto" if source in (None, "") else source
    if not isinstance(source, str):
        raise LTError(400, "source: must be a language code, or auto; see GET /languages")
    if target in (None, ""):
        raise LTError(400, "target: missing; send source and target language codes")
    if not isinstance(target, str):
        raise LTError(400, "target: must be a language code; see GET /languages")
    options, n_alternatives = decode_options(fields)
    model, assumed = pick_model(service.models, source, target)
    split = [LINE_BREAK.split(t) for t in texts]
    lines = [line for parts in split for line in parts]
    labels = [
        f"q[{i}]" if isinstance(fields["q"], list) else "q"
        for i, parts in enumerate(split)
        for _ in parts
    ]
    try:
        service.check_lines(lines, "q", labels)
        results = await service.translate(model, lines, options, attention=False, tgt_lang=target)
    except ApiError as exc:
        raise LTError(exc.status if exc.status != 422 else 400, exc.message, exc.headers) from None
    one = not isinstance(fields["q"], list)
    out = joined_texts(results, split, 0)
    answer: dict[str, Any] = {"translatedText": out[0] if one else out}
    if n_alternatives:
        alternatives = alternatives_of(results, split, n_alternatives)
        answer["alternatives"] = alternatives[0] if one else alternatives
    if source == "auto":  # assumed, not detected: confidence 0 (LibreTranslate's is 0-100)
        answer["detectedLanguage"] = {"confidence": 0.0, "language": assumed}
    return answer


def add_libretranslate_routes(app: FastAPI, service: Service) -> None:
    """Register ``POST /translate`` and ``GET /languages`` on ``app``."""
    errors: dict[int | str, dict[str, Any]] = {
        s: {"model": LibreTranslateError} for s in (400, 401, 403, 413, 500, 503, 504)
    }

    @app.post("/translate", response_model=LibreTranslateResponse, responses=errors)
    async def translate(request: Request) -> Any:
        """LibreTranslate-compatible translation (JSON or form: q, source, target)."""
        try:
            fields = await read_fields(request)
            answer = await lt_translate(service, fields, presented_key(request.headers))
        except LTError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        except Exception as exc:  # answered, and the server goes on
            logging.getLogger("uvicorn.error").error(
                "POST /translate failed (request id %s)", request_id.get(), exc_info=exc
            )
            return JSONResponse({"error": internal_message()}, status_code=500)
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
