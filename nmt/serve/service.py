"""The served models and limits, and the one way every route (``/v1`` and LibreTranslate's)
translates: :class:`Service`. Its errors are :class:`~nmt.serve.errors.ApiError` (the route
turns them into the JSON answer).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from nmt.decode.results import Translation
from nmt.errors import NMTError
from nmt.serve import work as work_limits
from nmt.serve.batcher import BatcherClosedError, QueueFullError
from nmt.serve.config import DecodeOptions, ServeConfig
from nmt.serve.errors import ApiError, internal_message, request_id
from nmt.serve.metrics import Metrics
from nmt.serve.registry import ServedModel
from nmt.serve.work import AttentionTooLargeError

RETRY_AFTER_S = 1  # what a 503 asks a client to wait: queued lines go in about that time

# uvicorn's own error log: an internal error's traceback lands beside its access line.
log = logging.getLogger("uvicorn.error")


class Service:
    """The served models and limits, and the one way every route translates (counting
    what it translates in ``metrics``)."""

    def __init__(self, models: dict[str, ServedModel], cfg: ServeConfig, metrics: Metrics):
        self.models, self.cfg, self.metrics = models, cfg, metrics

    def model(self, model_id: str | None) -> ServedModel:
        """The model ``model_id`` (the first one served when ``None``).

        Raises:
            ApiError: 404 for an id not served.
        """
        if model_id is None:
            return next(iter(self.models.values()))
        if model_id not in self.models:
            raise ApiError(
                404,
                "unknown_model",
                f"model: {model_id!r} is not served; choose one of {', '.join(self.models)}",
            )
        return self.models[model_id]

    def check_lines(self, lines: list[str], field: str, labels: list[str] | None = None) -> None:
        """Reject too many lines or characters (413) and lines that are not one line of
        text (422: a line break, NUL, or a lone surrogate, which JSON's ``\\ud800`` can
        carry but UTF-8 cannot), naming ``field`` (line ``i`` as ``labels[i]``, default
        ``field[i]``).

        Raises:
            ApiError: as above.
        """
        cfg = self.cfg
        if len(lines) > cfg.max_lines:
            raise ApiError(
                413,
                "too_many_lines",
                f"{field}: {len(lines)} lines; at most {cfg.max_lines} per request (--max-lines)",
            )
        chars = sum(map(len, lines))
        if chars > cfg.max_chars:
            raise ApiError(
                413,
                "too_many_chars",
                f"{field}: {chars} characters; at most {cfg.max_chars} per request (--max-chars)",
            )
        for i, line in enumerate(lines):
            where = labels[i] if labels else f"{field}[{i}]"
            if "\n" in line or "\r" in line or "\x00" in line:
                raise ApiError(
                    422,
                    "invalid_text",
                    f"{where}: contains a line break or NUL; send one line per item",
                )
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ApiError(
                    422,
                    "invalid_text",
                    f"{where}: character {exc.start} is a lone surrogate "
                    f"(U+{ord(line[exc.start]):04X}), not text; send valid Unicode",
                ) from None

    async def translate(
        self,
        model: ServedModel,
        lines: list[str],
        options: DecodeOptions,
        attention: bool,
        prefixes: list[str] | None = None,
        seed: int | None = None,
        tgt_lang: str | None = None,
        return_attention: bool = False,
    ) -> list[Translation]:
        """Translate through the model's batcher into ``tgt_lang``, within ``timeout_s``.
        ``attention``: compute each output's attention; ``return_attention``: the answer
        carries it, so its size is checked (before it is computed).

        A request over the timeout is given up: its work is cancelled, so that a batch not
        yet at its lines leaves them out and its result is discarded.

        Raises:
            ApiError: 422 invalid options or target language, 413 too much attention, 503
                queue full (with ``Retry-After``) or shutting down, 504 over the timeout,
                500 an internal error (logged with its traceback and the request id).
        """
        try:
            d = model.decode_config(options, seed, prefixes is not None)  # checked once
        except NMTError as exc:
            raise ApiError(422, "invalid_field", str(exc)) from None
        if prefixes is not None and len(prefixes) != len(lines):
            raise ApiError(
                422,
                "invalid_field",
                f"prefix: {len(prefixes)} prefixes for {len(lines)} src lines; give one per "
                "line ('' = none)",
            )
        try:
            work = model.encode(lines, d, prefixes, tgt_lang, attention)
        except NMTError as exc:
            raise ApiError(422, "invalid_field", str(exc)) from None
        if return_attention:
            work = replace(work, max_attention=work_limits.MAX_ATTENTION_VALUES)
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        try:
            future = model.submit(work, options)
        except BatcherClosedError as exc:
            raise ApiError(503, "shutting_down", str(exc)) from None
        except QueueFullError as exc:
            raise ApiError(
                503, "queue_full", f"server busy: {exc}; retry after {RETRY_AFTER_S} s", retry
            ) from None
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), self.cfg.timeout_s)
        except asyncio.TimeoutError:
            work.cancelled.set()
            raise ApiError(
                504,
                "timeout",
                f"not translated within {self.cfg.timeout_s:g} s (--timeout-s); send fewer "
                "lines or retry",
            ) from None
        except AttentionTooLargeError as exc:
            raise ApiError(413, "too_much_attention", str(exc)) from None
        except Exception as exc:  # a bug or a device error: answered, and the server goes on
            log.error(
                "translating %d lines failed (request id %s)",
                len(lines),
                request_id.get(),
                exc_info=exc,
            )
            raise ApiError(500, "internal", internal_message()) from None
        self.metrics.translated(model.id, results)
        return results
