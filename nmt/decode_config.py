"""The decoding settings: :class:`DecodeConfig`, frozen and validated when built (the
search, sampling, n-best, alignment and shortlist options of every engine). Importable from
:mod:`nmt.config` with the other configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nmt.errors import ConfigError

MAX_LEN_A = 1000.0  # output tokens per source token: far beyond any language pair's ratio


@dataclass(frozen=True)
class DecodeConfig:
    """Search settings for translation.

    Attributes:
        beam_size: hypotheses kept per sentence (1 = greedy search).
        length_penalty: alpha of the GNMT length penalty ((5 + len) / 6) ** alpha
            (Wu et al. 2016, eq. 14); 0 ranks by raw log-probability.
        max_len_a / max_len_b: a hypothesis stops at a * src_len + b target tokens.
        nbest: hypotheses returned per sentence (at most beam_size).
        batch_tokens: padded source tokens per translation batch.
        batch_size: sentences per translation batch (at most).
        alignment: also return each translation's word alignment (:mod:`nmt.decode.alignment`).
        alignment_layer: decoder layer (0-based) whose cross-attention gives the alignment;
            ``None`` = the penultimate (Garg et al. 2019).
        sampling_topk: 1 = search (greedy or beam); 0 = sample from the whole vocabulary;
            K > 1 = sample from the K most probable tokens (Fan et al. 2018).
        sampling_topp: sample from the smallest set of tokens whose probability reaches p
            (nucleus sampling, Holtzman et al. 2020); 1 = no cut.
        sampling_temperature: logits are divided by it before sampling.
        seed: sampling seed; each sentence draws from its own generator seeded from it and
            the sentence's line number (``None`` = a fresh seed for each call).
        shortlist: search each batch over the target pieces its sources make likely (the
            model folder's vocabulary shortlist, :mod:`nmt.decode.shortlist`), not the whole
            vocabulary: faster, and the same output wherever the full search's tokens are
            candidates. Search only (not sampling, not scoring given translations).
    """

    beam_size: int = 5
    length_penalty: float = 1.0
    max_len_a: float = 1.5
    max_len_b: int = 10
    nbest: int = 1
    batch_tokens: int = 4096
    batch_size: int = 64
    alignment: bool = False
    alignment_layer: int | None = None
    sampling_topk: int = 1
    sampling_topp: float = 1.0
    sampling_temperature: float = 1.0
    seed: int | None = None
    shortlist: bool = False

    @property
    def sampling(self) -> bool:
        """Whether this draws one output per sentence at random instead of searching."""
        return self.sampling_topk != 1

    def __post_init__(self) -> None:
        self._check_sampling()
        if self.alignment_layer is not None and self.alignment_layer < 0:
            raise ConfigError(f"alignment_layer={self.alignment_layer} must be 0 or more")
        if self.alignment and self.nbest > 1:
            raise ConfigError(
                f"alignment is given for the best translation: set nbest=1 (not {self.nbest})"
            )
        if self.beam_size < 1:
            raise ConfigError(f"beam_size={self.beam_size} must be at least 1")
        if not 1 <= self.nbest <= self.beam_size:
            raise ConfigError(
                f"nbest={self.nbest} must be between 1 and beam_size={self.beam_size}"
            )
        if not 0 <= self.max_len_a <= MAX_LEN_A:  # NaN fails too
            raise ConfigError(
                f"max_len_a={self.max_len_a} must be in [0, {MAX_LEN_A}] (the output is capped "
                "at the model's max_positions anyway)"
            )
        if self.max_len_b < 1:
            raise ConfigError(
                f"max_len_b={self.max_len_b} must be at least 1 (room for EOS; the output is "
                "a * src_len + b tokens at most)"
            )
        if not math.isfinite(self.length_penalty):
            raise ConfigError(f"length_penalty={self.length_penalty} must be a finite number")
        if self.batch_tokens < 1 or self.batch_size < 1:
            raise ConfigError("batch_tokens and batch_size must be positive")

    def _check_sampling(self) -> None:
        if self.sampling_topk < 0:
            raise ConfigError(f"sampling_topk={self.sampling_topk} must be 0 (all tokens) or more")
        if not 0.0 < self.sampling_topp <= 1.0:
            raise ConfigError(f"sampling_topp={self.sampling_topp} must be in (0, 1]")
        if not 0.0 < self.sampling_temperature < math.inf:  # NaN fails too
            raise ConfigError(
                f"sampling_temperature={self.sampling_temperature} must be positive and finite"
            )
        if self.sampling and self.shortlist:
            raise ConfigError(
                "shortlist (--shortlist) restricts search to a batch's likely target pieces; "
                "sampling (--sampling-topk) draws from the whole vocabulary: drop one of them"
            )
        if self.sampling and self.beam_size != 1:
            raise ConfigError(
                f"sampling_topk={self.sampling_topk} draws one output per sentence: set "
                f"beam_size=1 (it is {self.beam_size})"
            )
        if not self.sampling and (self.sampling_topp != 1.0 or self.sampling_temperature != 1.0):
            raise ConfigError(
                "sampling_topp and sampling_temperature apply only when sampling: set "
                "sampling_topk to 0 (all tokens) or to K > 1"
            )
