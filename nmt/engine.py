"""What every translation engine shares: lines in, one :class:`Translation` per line out, in
order; tokenization, truncation and empty lines; batches of similar length handed to the
engine's search (:class:`BaseTranslator`; engines: :mod:`nmt.translate`, :mod:`nmt.ct2`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from nmt.config import DecodeConfig
from nmt.errors import InputError
from nmt.search import Hypothesis
from nmt.streaming import available_chunks, length_batches
from nmt.tokenizer import Tokenizer


@dataclass(frozen=True)
class Translation:
    """The result for one input line.

    Attributes:
        text: the best translation (empty for an empty input line).
        score: its log-probability (natural log, EOS included); 0 for an empty line.
        nbest: ``(text, score)`` of the best hypotheses, best first (``DecodeConfig.nbest``).
        truncated: the source was longer than the model allows and was cut.
    """

    text: str
    score: float
    nbest: list[tuple[str, float]] = field(default_factory=list)
    truncated: bool = False


class BaseTranslator:
    """What every engine shares: streaming, tokenization, truncation, empty lines, order.

    Subclasses implement :meth:`search_rows`.

    Args:
        tokenizer: the model's SentencePiece model; decode: search settings.
        chunk_lines: input lines translated together at most (bounds memory).
        max_positions: the model's position limit; sources are cut to one less (EOS).
        strict: raise :class:`InputError` for a source longer than that instead of cutting.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None,
        chunk_lines: int,
        max_positions: int,
        strict: bool = False,
    ):
        self.tokenizer = tokenizer
        self.decode = decode or DecodeConfig()
        self.chunk_lines = chunk_lines
        self.max_src_tokens = max_positions - 1  # room for EOS
        self.strict = strict

    def translate(self, lines: Iterable[str]) -> Iterator[Translation]:
        """Translate ``lines`` (without newlines), yielding one result per line, in order.

        Raises:
            InputError: with ``strict``, a line longer than the model allows (line number
                counted from 1 over all of ``lines``).
        """
        first = 1
        for chunk in available_chunks(lines, self.chunk_lines):
            yield from self.translate_chunk(chunk, first)
            first += len(chunk)

    def translate_chunk(self, lines: list[str], first_line: int = 1) -> list[Translation]:
        """Translate a list of lines held in memory (``first_line``: number of ``lines[0]``)."""
        ids = self.tokenizer.encode(lines)
        truncated = [len(x) > self.max_src_tokens for x in ids]
        if self.strict and any(truncated):
            i = truncated.index(True)
            raise InputError(
                f"input line {first_line + i} has {len(ids[i])} tokens, the model takes at most "
                f"{self.max_src_tokens}; shorten it, or drop --strict to cut it with a warning"
            )
        ids = [x[: self.max_src_tokens] for x in ids]
        empty = Translation("", 0.0, [("", 0.0)] * self.decode.nbest)
        results: list[Translation] = [empty] * len(lines)
        for rows, hyps_of_rows in self.search_rows(ids):
            for row, hyps in zip(rows, hyps_of_rows):
                texts = self.tokenizer.decode([h.tokens for h in hyps])
                nbest = [(t, h.score) for t, h in zip(texts, hyps)]
                results[row] = Translation(texts[0], hyps[0].score, nbest, truncated[row])
        return results

    def search_rows(
        self, ids: list[list[int]]
    ) -> Iterator[tuple[list[int], list[list[Hypothesis]]]]:
        """Search the non-empty sources of ``ids`` in batches; yields ``(rows, nbest lists)``."""
        raise NotImplementedError

    def row_batches(self, ids: list[list[int]], rows: list[int]) -> list[list[int]]:
        """``rows`` of ``ids`` (source ids without EOS) cut into :func:`length_batches` by the
        decode settings' ``batch_tokens`` and ``batch_size`` (EOS counted); each batch is a
        list of rows."""
        lengths = [len(ids[r]) + 1 for r in rows]
        d = self.decode
        return [
            [rows[b] for b in batch]
            for batch in length_batches(lengths, d.batch_tokens, d.batch_size)
        ]
