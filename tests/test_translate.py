"""nmt.decode.translate: one output per input in order, batching invariance, truncation.

Batching (a batch of 20 or of 1, 1 worker thread or 3) changes padding and matrix shapes, and
on some CPUs the rounding with them; bf16 and int8 change the numbers more. So translations
are compared with ``agreement.py``: the same tokens and scores, or, where they differ, a
first difference at a near-tie of the float32 model (STYLE, "Tests that can fail" 12).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from agreement import (
    SCORE_TOL,
    Found,
    assert_float32_agree,
    assert_greedy_agree,
    assert_in_order,
    doubled_weight_copy,
    inject_bf16_log_probs,
    inject_padding_read,
    mean_log_prob_error,
    record_hypotheses,
    translate_recorded,
)

from nmt.config import DecodeConfig, ModelConfig
from nmt.data.tokenizer import Tokenizer
from nmt.decode.translate import Translator, cpu_workers, length_batches, worker_pool
from nmt.errors import ConfigError, InputError
from nmt.model.checkpoint import SPM_FILE, load_model
from nmt.model.int8 import Int8Linear, quantize_int8
from nmt.model.transformer import Transformer


@pytest.fixture(scope="module")
def lines(multi30k) -> list[str]:
    return multi30k("test_2016_flickr", "de", 20)


def load(tiny_run: Path, **decode) -> Translator:  # type: ignore[no-untyped-def]
    return Translator.load(tiny_run, DecodeConfig(**decode), device="cpu")


def assert_agree(tiny_run: Path, beam_size: int, a: Found, b: Found) -> None:
    assert_float32_agree(load_model(tiny_run)[0], beam_size, a, b)


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


@pytest.mark.kernels
def test_every_input_gives_one_output_in_order(tiny_run: Path, lines: list[str]) -> None:
    together, found_together = translate_recorded(load(tiny_run, beam_size=1), lines)
    single = load(tiny_run, beam_size=1)
    found_alone = record_hypotheses(single)
    for line in lines:
        assert_in_order(single, [line], list(single.translate([line])), found_alone)
    assert_agree(tiny_run, 1, found_together, found_alone)
    assert len({t.text for t in together}) > 10  # distinct sentences, distinct outputs


@pytest.mark.kernels
@pytest.mark.parametrize("beam_size", [1, 4])
def test_batched_equals_one_by_one(tiny_run: Path, lines: list[str], beam_size: int) -> None:
    _, batched = translate_recorded(load(tiny_run, beam_size=beam_size, batch_size=64), lines)
    _, single = translate_recorded(load(tiny_run, beam_size=beam_size, batch_size=1), lines)
    small_chunks = Translator.load(
        tiny_run,
        DecodeConfig(beam_size=beam_size, batch_tokens=50),
        device="cpu",
        chunk_lines=3,
    )
    _, chunked = translate_recorded(small_chunks, lines)
    assert_agree(tiny_run, beam_size, batched, single)
    assert_agree(tiny_run, beam_size, batched, chunked)


@pytest.mark.kernels
@pytest.mark.parametrize("beam_size", [1, 3])
def test_worker_threads_equal_one_thread(tiny_run: Path, lines: list[str], beam_size: int) -> None:
    """Batches searched by 3 worker threads at once give the same translations, in input
    order, as one batch at a time in the calling thread (which runs each product on all
    threads: possibly another summation order)."""
    decode = DecodeConfig(beam_size=beam_size, batch_size=4)
    serial = Translator.load(tiny_run, decode, device="cpu", workers=1)
    parallel = Translator.load(tiny_run, decode, device="cpu", workers=3)
    _, one = translate_recorded(serial, lines)
    _, three = translate_recorded(parallel, lines)
    assert serial.pool is None and parallel.pool is not None  # 5 batches: the pool ran
    assert_agree(tiny_run, beam_size, one, three)


def test_worker_pool_threads_leave_the_callers_setting() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = worker_pool(2, 1)
        assert {pool.submit(torch.get_num_threads).result() for _ in range(4)} == {1}
        assert torch.get_num_threads() == 2
        fresh: list[int] = []
        thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert fresh == [2]  # threads started later begin with the caller's count again
        pool.shutdown()
    finally:
        torch.set_num_threads(before)


def test_cpu_workers_share_the_threads() -> None:
    threads = torch.get_num_threads()
    assert cpu_workers() == (threads, 1)
    assert cpu_workers(1) == (1, threads)
    assert cpu_workers(threads * 2) == (threads * 2, 1)
    with pytest.raises(ConfigError, match="workers=-1"):
        cpu_workers(-1)


def test_translate_is_lazy(tiny_run: Path, lines: list[str]) -> None:
    read = []

    def source() -> Iterator[str]:
        for line in lines:
            read.append(line)
            yield line

    translator = Translator.load(tiny_run, DecodeConfig(beam_size=1), device="cpu", chunk_lines=4)
    results = translator.translate(source())
    first = next(results)
    # The reader runs ahead by at most two chunks (plus the chunk being translated).
    assert first.text and 1 <= len(read) <= 3 * 4 + 1 < len(lines)
    assert len(list(results)) == len(lines) - 1


def test_a_line_comes_back_before_the_input_ends(tiny_run: Path, lines: list[str]) -> None:
    """Interactive use: the next input line is sent only after the previous translation came
    back; translate() must not wait for a full chunk (or it would deadlock, caught by the
    timeout)."""
    answered = threading.Event()
    got: list[str] = []

    def conversation() -> Iterator[str]:
        for line in lines[:3]:
            yield line
            if not answered.wait(timeout=60):
                raise TimeoutError("no translation came back for a line already sent")
            answered.clear()

    translator = Translator.load(tiny_run, DecodeConfig(beam_size=2), device="cpu")
    for result in translator.translate(conversation()):
        got.append(result.text)
        answered.set()
    assert len(got) == 3 and all(got)


def test_reading_error_comes_after_the_lines_before_it(tiny_run: Path, lines: list[str]) -> None:
    def source() -> Iterator[str]:
        yield from lines[:2]
        raise InputError("not valid UTF-8", "in.txt", 3)

    results = Translator.load(tiny_run, DecodeConfig(beam_size=1), device="cpu").translate(source())
    assert next(results).text and next(results).text
    with pytest.raises(InputError, match="in.txt:3:"):
        next(results)


def test_strict_refuses_an_over_long_line_naming_it(tiny_run: Path, lines: list[str]) -> None:
    model, _ = load_model(tiny_run)
    short = Transformer(replace(model.cfg, max_positions=24))
    short.load_state_dict(model.state_dict())
    translator = Translator(short, Tokenizer(tiny_run / SPM_FILE), strict=True, chunk_lines=2)
    first, second = sorted(lines, key=len)[:2]  # both within the 23-token limit
    long_line = " ".join(lines[:4])
    with pytest.raises(
        InputError, match=r"input line 4 has \d+ tokens, the model takes at most 23"
    ):
        list(translator.translate([first, "", second, long_line]))


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


# bf16 and int8 against float32, teacher-forced on 200 reference translations: the mean
# absolute difference of the per-token log-probabilities (seen: bf16 0.008, int8 0.022, the
# same with AVX-512 and AVX2), and how far apart two tokens may be where greedy outputs
# diverge (seen: 0.04 and 0.06). Bugs injected before the cast or quantization gave a mean
# error of 0.34 (one 64x64 attention weight doubled), 0.56 (transposed) and 1.7 (every linear
# weight doubled), and greedy divergences at gaps of 0.15-8.6 nats, most above 0.4.
LOW_PRECISION = {"bf16": (0.05, 0.15), "int8": (0.08, 0.4)}  # (mean error, tie)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype, quantize", [("bf16", None), ("fp32", "int8")])
def test_bf16_and_int8_stay_close_to_float32(
    tiny_run: Path, multi30k, lines: list[str], dtype: str, quantize: str | None
) -> None:
    mean_error, tie = LOW_PRECISION[quantize or dtype]
    reference, _ = load_model(tiny_run)
    fast = Translator.load(
        tiny_run, DecodeConfig(beam_size=1), device="cpu", dtype=dtype, quantize=quantize
    )
    assert fast.model.embed.weight.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    tokenizer = fast.tokenizer
    src, tgt = (tokenizer.encode(multi30k("val", lang, 200)) for lang in ("de", "en"))
    error = mean_log_prob_error(reference, fast.model, src, tgt)
    print(f"{quantize or dtype}: mean per-token log-probability difference {error:.4f}")
    assert error <= mean_error

    _, found_exact = translate_recorded(load(tiny_run, beam_size=1), lines)
    _, found_fast = translate_recorded(fast, lines)
    same = assert_greedy_agree(reference, found_exact, found_fast, tie, score_tol=mean_error)
    print(f"{quantize or dtype}: {same}/{len(lines)} greedy outputs identical")


@pytest.mark.kernels
@pytest.mark.parametrize("dtype, quantize", [("bf16", None), ("fp32", "int8")])
def test_low_precision_bounds_fail_a_doubled_weight(
    tiny_run: Path,
    multi30k,
    lines: list[str],
    tmp_path: Path,
    dtype: str,
    quantize: str | None,
) -> None:
    """LOW_PRECISION's companion: one attention weight doubled before the cast or the
    quantization (a doubled scale) takes the mean error past its bound and makes greedy
    outputs diverge beyond its tie."""
    mean_error, tie = LOW_PRECISION[quantize or dtype]
    reference, _ = load_model(tiny_run)
    bugged = Translator.load(
        tiny_run, DecodeConfig(beam_size=1), device="cpu", dtype=dtype, quantize=quantize,
        weights=doubled_weight_copy(tiny_run, tmp_path / "doubled.safetensors"),
    )  # fmt: skip
    src, tgt = (bugged.tokenizer.encode(multi30k("val", lang, 200)) for lang in ("de", "en"))
    error = mean_log_prob_error(reference, bugged.model, src, tgt)
    print(f"{quantize or dtype} with a doubled weight: mean difference {error:.4f}")
    assert error > mean_error
    _, found_exact = translate_recorded(load(tiny_run, beam_size=1), lines)
    _, found_bugged = translate_recorded(bugged, lines)
    with pytest.raises(AssertionError, match="diverge at a gap"):
        assert_greedy_agree(reference, found_exact, found_bugged, tie, score_tol=mean_error)


@pytest.mark.kernels
def test_int8_bounds_fail_a_doubled_scale(tiny_run: Path, multi30k, lines: list[str]) -> None:
    """LOW_PRECISION["int8"]'s companion inside the int8 path itself: one int8 layer's
    per-channel scales doubled after quantization (the first decoder layer's self-attention
    output projection) takes the mean error past its bound and makes greedy outputs diverge
    beyond its tie."""
    mean_error, tie = LOW_PRECISION["int8"]
    reference, _ = load_model(tiny_run)
    bugged = Translator.load(tiny_run, DecodeConfig(beam_size=1), device="cpu", quantize="int8")
    layer = bugged.model.decoder_layers[0].self_attn.out_proj
    assert isinstance(layer, Int8Linear)
    layer.weight_scale.mul_(2.0)
    src, tgt = (bugged.tokenizer.encode(multi30k("val", lang, 200)) for lang in ("de", "en"))
    error = mean_log_prob_error(reference, bugged.model, src, tgt)
    print(f"int8 with a doubled scale: mean difference {error:.4f}")
    assert error > mean_error
    _, found_exact = translate_recorded(load(tiny_run, beam_size=1), lines)
    _, found_bugged = translate_recorded(bugged, lines)
    with pytest.raises(AssertionError, match="diverge at a gap"):
        assert_greedy_agree(reference, found_exact, found_bugged, tie, score_tol=mean_error)


def test_int8_swaps_every_linear_layer_and_warns_nothing(tiny_run: Path, lines: list[str]) -> None:
    """--quantization int8 quantizes every linear layer but the tied output projection
    (float32), and neither loading nor translating warns (torch.ao.quantization's
    quantize_dynamic, which it replaces, warned of its deprecation on every run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        translator = Translator.load(tiny_run, DecodeConfig(beam_size=2), "cpu", quantize="int8")
        results = list(translator.translate(lines[:4]))
    assert all(r.text for r in results)
    model = translator.model
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    n_linear = sum(type(m) is torch.nn.Linear for m in load_model(tiny_run)[0].modules())
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == n_linear > 0
    assert not isinstance(model.output_linear, Int8Linear)


@pytest.mark.kernels
@pytest.mark.parametrize("beam_size", [1, 4])
def test_float32_agreement_fails_a_wrong_padding_mask(
    tiny_run: Path, lines: list[str], beam_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The companion of FLOAT32_TIE (greedy) and BEAM_NORMALIZED_TOL (beam): a batch whose
    cross-attention reads the padding (a wrong mask) against each sentence alone; outputs
    diverge beyond the tie, or beam search keeps hypotheses further apart than the
    normalized tolerance."""
    batched = load(tiny_run, beam_size=beam_size, batch_size=64)
    inject_padding_read(monkeypatch, batched.model)
    _, found_batched = translate_recorded(batched, lines)
    _, found_alone = translate_recorded(load(tiny_run, beam_size=beam_size, batch_size=1), lines)
    expected = "diverge at a gap" if beam_size == 1 else "other tokens, normalized"
    with pytest.raises(AssertionError, match=expected):
        assert_agree(tiny_run, beam_size, found_batched, found_alone)


@pytest.mark.kernels
@pytest.mark.parametrize("beam_size", [1, 4])
def test_float32_scores_fail_log_probs_rounded_to_bf16(
    tiny_run: Path, lines: list[str], beam_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SCORE_TOL's companion: the same outputs, but scores summed from log-probabilities
    rounded to bfloat16 (a cast left in) are further from float32's than the tolerance."""
    bugged = load(tiny_run, beam_size=beam_size)
    inject_bf16_log_probs(monkeypatch, bugged.model)
    _, found_bugged = translate_recorded(bugged, lines)
    _, found_exact = translate_recorded(load(tiny_run, beam_size=beam_size), lines)
    with pytest.raises(AssertionError, match="same tokens, scores"):
        assert_agree(tiny_run, beam_size, found_exact, found_bugged)


def test_invalid_inference_settings_are_refused(tiny_run: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 is for GPUs"):
        Translator.load(tiny_run, device="cpu", dtype="fp16")
    with pytest.raises(ConfigError, match="choose one of fp32, bf16, fp16"):
        Translator.load(tiny_run, device="cpu", dtype="float8")
    with pytest.raises(ConfigError, match="only choice is int8"):
        Translator.load(tiny_run, device="cpu", quantize="int4")


def random_model_and_piece_of_line_2(
    tokenizer: Tokenizer, lines: list[str]
) -> tuple[Transformer, int]:
    """A random 1+1-layer model (seed 0) and a source piece of ``lines[1]`` that the first
    line does not hold (the piece whose embedding the NaN tests poison)."""
    (piece,) = [i for i in tokenizer.encode(lines[1:2])[0] if i not in tokenizer.encode(lines)[0]][
        :1
    ]
    cfg = dict(d_model=32, n_heads=4, ffn_dim=64, n_encoder_layers=1, n_decoder_layers=1)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tokenizer.vocab_size, src_vocab_size=tokenizer.vocab_size,
                    dropout=0.0, max_positions=64, **cfg)
    ).eval()  # fmt: skip
    return model, piece


@pytest.mark.parametrize(
    "decode",
    [
        DecodeConfig(beam_size=1),
        DecodeConfig(beam_size=3, nbest=2),
        DecodeConfig(beam_size=1, sampling_topk=0, seed=1),
    ],
    ids=["greedy", "beam", "sampling"],
)
def test_a_sentence_without_output_keeps_its_place_with_a_warning(
    tokenizer: Tokenizer, decode: DecodeConfig
) -> None:
    """A random model whose source embedding of one piece is NaN: the sentence holding it
    gets NaN log-probabilities, so its search never reaches EOS (beam, sampling) or ends
    with a NaN score (greedy); the others translate normally. Every line keeps exactly its
    own result: that one empty, with the reason and a warning naming its line. (Greedy and
    sampling dropped it, so the next line got its neighbour's output; beam search left no
    hypothesis, and hyps[0] raised IndexError.)"""
    lines = ["Ein Mann schläft .", "Eine Frau singt .", "", "Ein Hund läuft ."]
    model, woman = random_model_and_piece_of_line_2(tokenizer, lines)
    decode = replace(decode, max_len_a=0.0, max_len_b=5)
    alone = [Translator(model, tokenizer, decode).translate_chunk([line], i + 1)[0]
             for i, line in enumerate(lines)]  # fmt: skip
    with torch.no_grad():
        model.src_embed.weight[woman] = float("nan")
    with pytest.warns(RuntimeWarning, match="input line 2: the search") as caught:
        results = list(Translator(model, tokenizer, decode).translate(lines))
    assert len(caught) == 1 and len(results) == 4
    failed = results[1]
    assert (failed.text, failed.score, failed.failure) == ("", float("-inf"), failed.failure)
    assert failed.failure and failed.nbest == [("", float("-inf"))] * decode.nbest
    for i in (0, 2, 3):  # each alone, as in this batch (the batch differs only by padding)
        assert results[i].failure is None
        assert results[i].text == alone[i].text
        assert abs(results[i].score - alone[i].score) <= SCORE_TOL * 6


def test_a_nan_line_under_int8_fails_alone(tokenizer: Tokenizer) -> None:
    """int8 quantizes a whole batch's activations with one scale: a NaN row (one piece's
    embedding NaN) used to raise ValueError for the whole batch ("cannot convert float NaN
    to integer"). Now that line alone is a failure with a warning and the others translate."""
    lines = ["Ein Mann schläft .", "Eine Frau singt .", "Ein Hund läuft ."]
    model, woman = random_model_and_piece_of_line_2(tokenizer, lines)
    with torch.no_grad():
        model.src_embed.weight[woman] = float("nan")
    model = quantize_int8(model)
    decode = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=5)
    with pytest.warns(RuntimeWarning, match="input line 2: the search"):
        results = list(Translator(model, tokenizer, decode).translate(lines))
    assert [r.failure is not None for r in results] == [False, True, False]
    assert all(r.text for r in (results[0], results[2]))
