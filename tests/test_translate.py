"""nmt.translate: one output per input in order, batching invariance, truncation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nmt.checkpoint import SPM_FILE, load_model
from nmt.config import DecodeConfig
from nmt.model import Transformer
from nmt.tokenizer import Tokenizer
from nmt.translate import Translator, length_batches


@pytest.fixture(scope="module")
def lines(multi30k) -> list[str]:
    return multi30k("test_2016_flickr", "de", 20)


def load(tiny_run: Path, **decode) -> Translator:  # type: ignore[no-untyped-def]
    return Translator.load(tiny_run, DecodeConfig(**decode), device="cpu")


def test_empty_lines_give_empty_outputs_in_place(tiny_run: Path, lines: list[str]) -> None:
    translator = load(tiny_run, beam_size=3)
    inputs = ["", lines[0], "   ", lines[1], "", lines[2], ""]
    results = list(translator.translate(inputs))
    assert len(results) == len(inputs)
    assert [r.text for r in results][::2] == ["", "", "", ""]
    assert all(r.score == 0.0 for r in results[::2])
    expected = [r.text for r in translator.translate(lines[:3])]
    assert [r.text for r in results[1::2]] == expected
    assert all(expected)


def test_every_input_gives_one_output_in_order(tiny_run: Path, lines: list[str]) -> None:
    translator = load(tiny_run, beam_size=1)
    together = list(translator.translate(lines))
    alone = [next(iter(translator.translate([line]))) for line in lines]
    assert [t.text for t in together] == [t.text for t in alone]
    assert len({t.text for t in together}) > 10  # distinct sentences, distinct outputs


@pytest.mark.parametrize("beam_size", [1, 4])
def test_batched_equals_one_by_one(tiny_run: Path, lines: list[str], beam_size: int) -> None:
    batched = list(load(tiny_run, beam_size=beam_size, batch_size=64).translate(lines))
    single = list(load(tiny_run, beam_size=beam_size, batch_size=1).translate(lines))
    small_chunks = Translator.load(
        tiny_run,
        DecodeConfig(beam_size=beam_size, batch_tokens=50),
        device="cpu",
        chunk_lines=3,
    )
    chunked = list(small_chunks.translate(lines))
    assert [t.text for t in batched] == [t.text for t in single] == [t.text for t in chunked]
    assert [t.score for t in batched] == pytest.approx([t.score for t in single], abs=1e-4)
    assert [t.score for t in batched] == pytest.approx([t.score for t in chunked], abs=1e-4)


def test_translate_is_lazy(tiny_run: Path, lines: list[str]) -> None:
    read = []

    def source() -> Iterator[str]:
        for line in lines:
            read.append(line)
            yield line

    translator = Translator.load(tiny_run, DecodeConfig(beam_size=1), device="cpu", chunk_lines=4)
    results = translator.translate(source())
    first = next(results)
    assert len(read) == 4 and first.text
    assert len(list(results)) == len(lines) - 1


def test_nbest(tiny_run: Path, lines: list[str]) -> None:
    results = list(load(tiny_run, beam_size=4, nbest=3).translate(lines[:5]))
    for t in results:
        assert len(t.nbest) == 3
        assert t.nbest[0] == (t.text, t.score)


def test_over_long_input_is_truncated_and_still_translated(
    tiny_run: Path, lines: list[str]
) -> None:
    model, _ = load_model(tiny_run)
    short = Transformer(replace(model.cfg, max_positions=24))  # 23 source tokens + EOS
    short.load_state_dict(model.state_dict())  # the position table is not saved
    tokenizer = Tokenizer(tiny_run / SPM_FILE)
    short_line, long_line = min(lines, key=len), " ".join(lines[:4])
    assert len(tokenizer.encode([short_line])[0]) <= 23 < len(tokenizer.encode([long_line])[0])
    translator = Translator(short, tokenizer, DecodeConfig(beam_size=2))
    results = list(translator.translate([short_line, long_line, ""]))
    assert [r.truncated for r in results] == [False, True, False]
    assert results[1].text and len(tokenizer.encode([results[1].text])[0]) <= 23


def test_length_batches() -> None:
    lengths = [5, 30, 2, 17, 17, 9, 1, 40, 3]
    batches = length_batches(lengths, batch_tokens=60, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 60
