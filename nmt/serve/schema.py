"""The JSON of ``nmt serve``: pydantic models for every request and response.

They are what the OpenAPI page at ``/docs`` shows. Requests are strict (a number where a
string belongs is an error, not converted) and reject unknown fields, so that a misspelt
option is reported instead of silently ignored; the LibreTranslate request accepts the extra
fields its clients send (``api_key``, ``format``, ...). Needs pydantic (installed with
FastAPI, the ``serve`` extra).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from nmt.config import DecodeConfig
from nmt.serve.config import MAX_LINES_LIMIT, DecodeOptions

MAX_BEAM = 32  # a larger beam only costs time: refused rather than run

# Deprecated request fields, by the field that replaces each.
DEPRECATED_FIELDS = {"return_alignment": "return_piece_alignment"}


class TranslateRequest(BaseModel):
    """``POST /v1/translate``: source lines and decoding options."""

    model_config = ConfigDict(extra="forbid", strict=True)

    src: list[str] = Field(
        min_length=1,
        max_length=MAX_LINES_LIMIT,
        description="Source lines, one sentence each (at most the server's --max-lines).",
    )
    model: str | None = Field(
        default=None, description="Model id (GET /v1/models); default: the first."
    )
    tgt_lang: str | None = Field(
        default=None,
        description="Target language, one of the model's pairs (GET /v1/models); required "
        "for a multilingual model of several target languages.",
    )
    beam_size: int = Field(
        default=DecodeConfig.beam_size, ge=1, le=MAX_BEAM, description="1 = greedy."
    )
    nbest: int = Field(
        default=DecodeConfig.nbest, ge=1, le=MAX_BEAM, description="At most beam_size."
    )
    length_penalty: float = Field(
        default=DecodeConfig.length_penalty,
        ge=0.0,
        le=10.0,
        description="GNMT alpha (Wu et al. 2016).",
    )
    sampling_topk: int = Field(
        default=DecodeConfig.sampling_topk,
        ge=0,
        description="1 = search; K > 1 samples from the K likeliest tokens (Fan et al. 2018); "
        "0 = from all. Sampling implies beam_size 1 unless beam_size is given.",
    )
    sampling_topp: float = Field(
        default=DecodeConfig.sampling_topp,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling: the smallest set of tokens reaching p (Holtzman et al. "
        "2020); 1 = no cut.",
    )
    sampling_temperature: float = Field(
        default=DecodeConfig.sampling_temperature, gt=0.0, le=100.0, description="Divides logits."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        description="Sampling seed: line i of src draws from a stream seeded by (seed, i), as "
        "nmt translate --seed; none = a fresh seed.",
    )
    prefix: list[str] | None = Field(
        default=None,
        max_length=MAX_LINES_LIMIT,
        description="A target prefix per src line ('' = none): the output starts with it and "
        "the search continues from it.",
    )
    return_scores: bool = Field(default=False, description="Add each output's log-probability.")
    return_piece_alignment: bool = Field(
        default=False,
        description="Add piece_alignment: the hard alignment of pieces, 'src-tgt' pairs of "
        "piece positions (from attention; nmt translate --alignment gives words instead).",
    )
    return_alignment: bool = Field(
        default=False,
        json_schema_extra={"deprecated": True},
        description="Deprecated: write return_piece_alignment. Adds the same piece pairs "
        "under the old name alignment; a request that sends it is answered with the headers "
        "Deprecation: true and Warning: 299.",
    )
    return_attention: bool = Field(
        default=False,
        description="Add the cross-attention weights (n_layers, n_heads, tgt_len, src_len) and "
        "the pieces (torch engine).",
    )

    @model_validator(mode="before")
    @classmethod
    def _many_unknown_fields(cls, data: Any) -> Any:
        """One error for a body of many unknown fields, instead of pydantic's one per field
        (500,000 of them took six seconds of the event loop to report)."""
        if isinstance(data, dict) and len(data) > 2 * len(cls.model_fields):
            unknown = [str(k) for k in data if k not in cls.model_fields]
            raise PydanticCustomError(
                "extra_forbidden",
                "{count} unknown fields ({first}, ...); see /docs for the fields",
                {"count": len(unknown), "first": ", ".join(unknown[:3])},
            )
        return data

    def deprecations(self) -> list[str]:
        """A message for each deprecated field (:data:`DEPRECATED_FIELDS`) the request sent."""
        return [
            f"{old} is deprecated: write {new} instead (the same pairs)"
            for old, new in DEPRECATED_FIELDS.items()
            if old in self.model_fields_set
        ]

    def options(self) -> DecodeOptions:
        """The decoding options: the batch key. Sampling without an explicit ``beam_size``
        takes one sample (beam 1), as ``nmt translate --sampling-topk`` does."""
        sampling = self.sampling_topk != 1
        beam = 1 if sampling and "beam_size" not in self.model_fields_set else self.beam_size
        return DecodeOptions(
            beam,
            self.nbest,
            self.length_penalty,
            self.sampling_topk,
            self.sampling_topp,
            self.sampling_temperature,
        )


class AttentionOut(BaseModel):
    """Cross-attention of one output: ``weights[layer][head][tgt][src]``; ``tgt_pieces`` and
    ``src_pieces`` end with ``</s>`` (EOS)."""

    src_pieces: list[str]
    tgt_pieces: list[str]
    shape: list[int] = Field(description="(n_layers, n_heads, tgt_len, src_len)")
    weights: list[list[list[list[float]]]]


class HypothesisOut(BaseModel):
    """One of the n-best outputs. They are ranked by the length-normalized score (``score``
    over the GNMT length penalty of ``length_penalty``), as ``nmt translate --nbest``
    ranks them, so ``score`` alone need not decrease down the list."""

    text: str
    score: float = Field(description="Log-probability of the output (natural log, EOS included).")
    piece_alignment: str | None = None
    alignment: str | None = Field(default=None, json_schema_extra={"deprecated": True})
    attention: AttentionOut | None = None


class TranslationOut(BaseModel):
    """The result for one source line; ``nbest`` when more than one was asked for."""

    text: str
    score: float | None = None
    nbest: list[HypothesisOut] | None = None
    piece_alignment: str | None = Field(
        default=None,
        description="'src-tgt' pairs of piece positions (return_piece_alignment), e.g. '0-0 1-2'.",
    )
    alignment: str | None = Field(
        default=None,
        json_schema_extra={"deprecated": True},
        description="Deprecated: the same piece pairs as piece_alignment, given only for the "
        "old return_alignment.",
    )
    attention: AttentionOut | None = None
    truncated: bool | None = Field(
        default=None, description="True when the line was cut to the limit."
    )
    failure: str | None = Field(
        default=None,
        description="Why a non-empty line has no translation (its search found no output).",
    )


class TranslateResponse(BaseModel):
    """``POST /v1/translate``'s answer: one translation per source line, in order."""

    translations: list[TranslationOut]
    model: str
    time_ms: float = Field(description="Time spent on the request in the server, ms.")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of the ``/v1`` routes."""

    error: ErrorBody


class ModelInfo(BaseModel):
    id: str
    src_lang: str
    tgt_lang: str
    pairs: list[str] = Field(description="The directions it translates, as src-tgt.")
    engine: str
    shape: dict[str, Any]
    sha256: str = Field(description="sha256 of the weights file.")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    """``GET /health``: 200 with status ``ok`` when ready to translate, else 503 with status
    ``unavailable`` and the ``problems``."""

    status: str = Field(description="ok, or unavailable (answered with 503).")
    models: list[str]
    queued: int = Field(description="Requests (or parts of one) waiting for a batch, all models.")
    queued_lines: int = Field(description="Lines waiting for a batch, all models (--max-queue).")
    running: int = Field(description="Batches being translated now, all models.")
    batches: int = Field(description="Batches dispatched since the server started, all models.")
    problems: list[str] = Field(default_factory=list, description="Why it is not ready.")


class LibreTranslateResponse(BaseModel):
    """LibreTranslate's ``POST /translate`` answer."""

    translatedText: str | list[str]
    alternatives: list[str] | list[list[str]] | None = Field(
        default=None, description="With alternatives: N, the next-best distinct translations."
    )
    detectedLanguage: dict[str, Any] | None = Field(
        default=None,
        description="With source auto: the model's source language, confidence 0 (assumed; "
        "nmt detects no language).",
    )


class LibreTranslateError(BaseModel):
    error: str


class Language(BaseModel):
    """An entry of LibreTranslate's ``GET /languages``."""

    code: str
    name: str
    targets: list[str]
