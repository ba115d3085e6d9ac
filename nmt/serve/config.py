"""The settings of ``nmt serve``: the server's limits (:class:`ServeConfig`) and the
decoding options of one request (:class:`DecodeOptions`, the dynamic batcher's key).

Torch-free and HTTP-free, so that the request schema (:mod:`nmt.serve.schema`) and the
command line read them without loading a model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from nmt.config import DecodeConfig
from nmt.errors import ConfigError

MAX_LINES_LIMIT = 10_000  # --max-lines at most: pydantic checks a list's length before its items


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``nmt serve``.

    Attributes:
        host / port: where to listen.
        batch_tokens: source tokens per dynamic batch at most (EOS counted).
        max_wait_ms: how long a queued request waits for others to share its batch, ms
            (never when it is alone in the server).
        max_lines / max_chars: the most lines, and characters over all lines, in one request.
        timeout_s: a request not answered within this many seconds gets 504.
        workers: translation worker threads, as ``nmt translate --workers``.
        max_queue: lines waiting for a batch at most, per model; a request that would pass
            it gets 503 with ``Retry-After`` (at least ``max_lines``, so that every request
            the server accepts can be queued).
        api_keys: the keys a client must send (:func:`read_api_keys`); empty = none needed.
        cors_origins: the browser origins allowed to call the API (``*`` = any); empty =
            no CORS headers (a page on another origin cannot read the answers).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    batch_tokens: int = 4096
    max_wait_ms: float = 10.0
    max_lines: int = 256
    max_chars: int = 20000
    timeout_s: float = 30.0
    workers: int = 0
    max_queue: int = 4096
    api_keys: frozenset[str] = frozenset()
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "max_lines", "max_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.max_lines > MAX_LINES_LIMIT:
            raise ConfigError(f"max_lines={self.max_lines} must be at most {MAX_LINES_LIMIT}")
        # The comparisons are written so that NaN fails them.
        if not 0 <= self.max_wait_ms < math.inf:
            raise ConfigError(f"max_wait_ms={self.max_wait_ms} must be a number >= 0")
        if not 0 < self.timeout_s < math.inf:
            raise ConfigError(f"timeout_s={self.timeout_s} must be a number > 0")
        if self.workers < 0:
            raise ConfigError(f"workers={self.workers} must be >= 0 (0 = one per core)")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port={self.port} must be between 0 and 65535")
        if self.max_queue < self.max_lines:
            raise ConfigError(
                f"max_queue={self.max_queue} must be at least max_lines={self.max_lines}: a "
                "request of max_lines lines could never be queued; raise --max-queue"
            )

    @property
    def max_body_bytes(self) -> int:
        """The largest request body accepted (bytes): room for ``max_chars`` characters of
        source and as many of prefixes, each JSON-escaped (``\\uXXXX``, twelve bytes for a
        character outside the BMP), 64 bytes of quotes and commas per line, and 64 KiB for
        the rest."""
        return 2 * 12 * self.max_chars + 64 * self.max_lines + 65536


KEY = re.compile(r"^[\x21-\x7e]{8,256}$")  # visible ASCII, no spaces: safe in a header


def read_api_keys(path: str | Path) -> frozenset[str]:
    """The API keys in ``path`` (``nmt serve --api-key-file``): one per line, 8 to 256
    visible ASCII characters; blank lines and lines starting with ``#`` are skipped.

    Raises:
        ConfigError: the file cannot be read, a line is not a usable key (naming the file
            and line, never the key), or it holds no key.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-key-file {path}: cannot read it ({exc})") from None
    keys = set()
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not KEY.match(key):
            raise ConfigError(
                f"{path}:{number}: not a usable API key; a key is 8 to 256 visible ASCII "
                "characters without spaces, one per line"
            )
        keys.add(key)
    if not keys:
        raise ConfigError(f"--api-key-file {path}: no key in it; write one key per line")
    return frozenset(keys)


@dataclass(frozen=True)
class DecodeOptions:
    """The per-request decoding options (a batch key: requests share batches only when these
    are equal). Defaults are :class:`~nmt.config.DecodeConfig`'s."""

    beam_size: int = DecodeConfig.beam_size
    nbest: int = DecodeConfig.nbest
    length_penalty: float = DecodeConfig.length_penalty
    sampling_topk: int = DecodeConfig.sampling_topk
    sampling_topp: float = DecodeConfig.sampling_topp
    sampling_temperature: float = DecodeConfig.sampling_temperature

    @property
    def sampling(self) -> bool:
        """Whether these options sample instead of searching (top-k other than 1)."""
        return self.sampling_topk != 1

    def config(self, base: DecodeConfig, seed: int | None = None) -> DecodeConfig:
        """``base`` (the served model's settings) searched with these options and sampling
        ``seed``; a new value per call, never a copy of the engine kept per options.

        Raises:
            ConfigError: options that do not go together (``nbest`` above ``beam_size``).
        """
        return replace(
            base,
            beam_size=self.beam_size,
            nbest=self.nbest,
            length_penalty=self.length_penalty,
            sampling_topk=self.sampling_topk,
            sampling_topp=self.sampling_topp,
            sampling_temperature=self.sampling_temperature,
            seed=seed,
        )
