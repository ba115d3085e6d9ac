"""A served model's beam searches that new requests join while they run.

Under a steady stream of short requests, fixed batches leave a server far below the
throughput of translating a file: each batch runs as long as its longest sentence, workers
idle while the next requests cross the event loop, and closed-loop clients settle into small
groups that never merge (docs/benchmarks.md). Here the batcher hands a worker a
:class:`~nmt.batcher.RunningBatch`; the worker runs one
:class:`~nmt.continuous.ContinuousBeamSearch` over it, takes the requests that join between
its steps, and answers each request as soon as its last line is done (iteration-level
batching; Yu et al. 2022, "Orca").

Beam search on a torch Transformer joins; greedy search, sampling, ensembles and the
CTranslate2 engine run fixed batches (:meth:`nmt.registry.ServedModel.run`).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from nmt.batcher import RunningBatch
from nmt.continuous import ContinuousBeamSearch
from nmt.model import Transformer
from nmt.registry import DecodeOptions, ServedModel, Work
from nmt.search import Hypothesis
from nmt.translate import Translator


def joins(model: ServedModel, options: Hashable) -> bool:
    """Whether requests with ``options`` join running searches of ``model``: beam search
    (``beam_size`` of 2 or more, no sampling) on one torch Transformer."""
    translator = model.translator
    return (
        isinstance(options, DecodeOptions)
        and options.beam_size > 1
        and not options.sampling
        and isinstance(translator, Translator)
        and isinstance(translator.model, Transformer)
    )


@dataclass
class _Request:
    """A joined request: its work, and the hypotheses found for each line so far."""

    work: Work
    found: list[list[Hypothesis] | None]
    left: int  # lines still searched


def run_joining(model: ServedModel, options: Hashable, batch: RunningBatch) -> None:
    """Search ``batch``'s requests, and those that join it, until none is left; answer each
    request (one :class:`~nmt.registry.LineResult` per line) as soon as it is done."""
    assert isinstance(options, DecodeOptions)
    translator = model.translator_for(options)
    assert isinstance(translator, Translator) and isinstance(translator.model, Transformer)
    d = translator.decode
    search = ContinuousBeamSearch(
        translator.model, d.beam_size, d.length_penalty, d.max_len_a, d.max_len_b, d.nbest
    )
    requests: dict[int, _Request] = {}
    line_of: dict[int, tuple[int, int]] = {}  # sentence id -> (request number, line)

    def answer(number: int) -> None:
        r = requests.pop(number)
        lines = zip(r.work.ids, r.work.truncated, r.found)
        batch.finish(
            number, [model.line_result(s, t, h or [], r.work.attention) for s, t, h in lines]
        )

    def add(joined: list[tuple[int, Work]]) -> None:
        sources, prefixes, owners = [], [], []
        for number, work in joined:
            lines = [i for i, x in enumerate(work.ids) if x]  # empty lines need no search
            requests[number] = _Request(work, [None] * len(work.ids), len(lines))
            for i in lines:
                sources.append(work.ids[i])
                prefixes.append(work.prefixes[i] if work.prefixes is not None else [])
                owners.append((number, i))
        if sources:
            any_prefix = any(prefixes)
            for sentence, owner in zip(
                search.add(sources, prefixes if any_prefix else None), owners
            ):
                line_of[sentence] = owner
        for number, _ in joined:
            if requests[number].left == 0:
                answer(number)
        collect()

    def collect() -> None:
        for sentence, hyps in search.done():
            number, line = line_of.pop(sentence)
            r = requests[number]
            r.found[line] = hyps
            r.left -= 1
            if r.left == 0:
                answer(number)

    add(batch.payloads)
    while search.live:
        search.step()
        collect()
        if search.live:
            add(batch.join(search.live_tokens))
