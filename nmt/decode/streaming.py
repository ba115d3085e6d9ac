"""Input in bounded memory: lines read ahead in a background thread and handed out in chunks
of what has arrived, and a chunk's sentences cut into batches of similar length.

Torch-free, shared by every translation engine (:mod:`nmt.decode.translate`, :mod:`nmt.decode.ct2`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

from nmt.errors import InputError

T = TypeVar("T")


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


_END = object()


def available_chunks(lines: Iterable[T], max_lines: int) -> Iterator[list[T]]:
    """Group ``lines`` into chunks of at most ``max_lines`` without waiting for input that
    has not arrived: a background thread reads ahead (at most ``2 * max_lines`` lines), and a
    chunk ends when it is full or when nothing more is available right now.

    An exception raised while reading (e.g. a non-UTF-8 line) is raised here after the lines
    before it have been yielded.
    """
    pending: queue.Queue[object] = queue.Queue(maxsize=2 * max_lines)

    def read() -> None:
        try:
            for line in lines:
                pending.put(line)
        except BaseException as exc:  # handed to the consumer
            pending.put(exc)
        pending.put(_END)

    threading.Thread(target=read, daemon=True).start()
    while True:
        chunk: list[T] = []
        item = pending.get()
        while item is not _END and not isinstance(item, BaseException):
            chunk.append(item)  # type: ignore[arg-type]
            if len(chunk) >= max_lines:
                break
            try:
                item = pending.get_nowait()
            except queue.Empty:
                break
        if chunk:
            yield chunk
        if isinstance(item, BaseException):
            raise item
        if item is _END:
            return


def paired(
    lines: Iterable[str],
    others: Iterable[str],
    source: str = "target prefixes",
    what: str = "target prefix",
) -> Iterator[tuple[str, str]]:
    """``(line, other)`` pairs, streamed (``others``: one ``what`` per line, read from
    ``source``).

    Raises:
        InputError: one runs out before the other (names ``source`` and the line).
    """
    missing = object()
    number = 0
    other_iter = iter(others)
    for number, line in enumerate(lines, start=1):
        other = next(other_iter, missing)
        if other is missing:
            raise InputError(
                f"no {what} for input line {number}: give one per input line (an empty "
                "line for none)",
                source,
                number,
            )
        yield line, other  # type: ignore[misc]
    if next(other_iter, missing) is not missing:
        raise InputError(
            f"more lines than the {number} input lines: give one {what} per input line",
            source,
            number + 1,
        )
