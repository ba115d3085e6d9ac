"""Lines in, translations out: tokenize, batch by length, search, detokenize, keep order.

``Translator.load(DIR).translate(lines)`` is what ``nmt translate`` calls and what a Python
user calls. Input is consumed in chunks, so a file of any size translates in bounded memory,
and each chunk's translations are yielded in input order as soon as the chunk is done.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch

from nmt.checkpoint import SPM_FILE, load_model
from nmt.config import DecodeConfig
from nmt.data import pad
from nmt.model import Transformer
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.tokenizer import EOS_ID, Tokenizer


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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def length_batches(lengths: list[int], batch_tokens: int, batch_size: int) -> list[list[int]]:
    """Indices sorted by length and cut into batches of at most ``batch_size`` sentences and
    ``batch_tokens`` padded tokens (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= batch_size or (len(current) + 1) * width > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Translator:
    """A loaded model, its tokenizer and search settings.

    Args:
        model: the Transformer (put in eval mode here).
        tokenizer: the joint SentencePiece model it was trained with.
        decode: search settings.
        chunk_lines: input lines read and translated together (bounds memory).
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        decode: DecodeConfig | None = None,
        chunk_lines: int = 2000,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decode = decode or DecodeConfig()
        self.chunk_lines = chunk_lines
        self.device = next(model.parameters()).device
        self.max_src_tokens = model.cfg.max_positions - 1  # room for EOS

    @classmethod
    def load(
        cls,
        folder: str | Path,
        decode: DecodeConfig | None = None,
        device: str | torch.device = "auto",
        weights: str | Path | None = None,
        chunk_lines: int = 2000,
    ) -> Translator:
        """Load a model folder (config.json, spm.model, model.safetensors).

        Raises:
            CheckpointError: a file is missing or of another format version.
        """
        model, _ = load_model(folder, weights=weights, device=resolve_device(device))
        return cls(model, Tokenizer(Path(folder) / SPM_FILE), decode, chunk_lines)

    def translate(self, lines: Iterable[str]) -> Iterator[Translation]:
        """Translate ``lines`` (without newlines), yielding one result per line, in order."""
        iterator = iter(lines)
        while chunk := list(islice(iterator, self.chunk_lines)):
            yield from self.translate_chunk(chunk)

    def translate_chunk(self, lines: list[str]) -> list[Translation]:
        """Translate a list of lines held in memory."""
        ids = self.tokenizer.encode(lines)
        truncated = [len(x) > self.max_src_tokens for x in ids]
        ids = [x[: self.max_src_tokens] for x in ids]
        results: list[Translation | None] = [
            Translation("", 0.0, [("", 0.0)] * self.decode.nbest) if not x else None for x in ids
        ]
        todo = [i for i, x in enumerate(ids) if x]
        batches = length_batches(
            [len(ids[i]) + 1 for i in todo], self.decode.batch_tokens, self.decode.batch_size
        )
        for batch in batches:
            rows = [todo[b] for b in batch]
            src = pad([ids[r] for r in rows], suffix=EOS_ID).to(self.device)
            for row, hyps in zip(rows, self.search(src)):
                texts = self.tokenizer.decode([h.tokens for h in hyps])
                nbest = [(t, h.score) for t, h in zip(texts, hyps)]
                results[row] = Translation(texts[0], hyps[0].score, nbest, truncated[row])
        return [r if r is not None else Translation("", 0.0) for r in results]

    def search(self, src: torch.Tensor) -> list[list[Hypothesis]]:
        """Run the configured search on ``(batch, src_len)`` ids; nbest lists per sentence."""
        d = self.decode
        if d.beam_size == 1:
            return [[h] for h in greedy_search(self.model, src, d.max_len_a, d.max_len_b)]
        return beam_search(
            self.model, src, d.beam_size, d.length_penalty, d.max_len_a, d.max_len_b, d.nbest
        )
