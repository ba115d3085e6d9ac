"""nmt.evaluate.score against sacreBLEU itself (Python API and the ``sacrebleu`` command) on
Multi30k."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import multi30k_file
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from nmt.errors import ConfigError, InputError
from nmt.evaluate.score import (
    METRICS,
    TOKENIZERS,
    ScoreOptions,
    check_hypotheses,
    corpus_scores,
    read_inputs,
    read_text,
    sentence_scores,
)
from nmt.evaluate.significance import paired_test

SACREBLEU = Path(sys.executable).parent / "sacrebleu"


pytestmark = pytest.mark.usefixtures("multi30k_dir")  # Multi30k, or the run stops at once


def _lines(name: str) -> list[str]:
    """The lines of the Multi30k file ``NAME.gz``, read by ``read_text``."""
    return read_text(multi30k_file(f"{name}.gz"))


def drop_words(lines: list[str], every: int, offset: int = 0) -> list[str]:
    """Every ``every``-th line (from ``offset``) keeps only every second word."""
    return [" ".join(s.split()[::2]) if i % every == offset else s for i, s in enumerate(lines)]


@pytest.fixture(scope="module")
def ref() -> list[str]:
    return _lines("val.en")


@pytest.fixture(scope="module")
def hyp(ref: list[str]) -> list[str]:
    return drop_words(ref, 3)


def _sacrebleu_cli(*args: str | Path, env: dict[str, str] | None = None) -> list | dict:
    assert SACREBLEU.is_file(), (
        f"sacrebleu (a dependency) installs no command next to {sys.executable}"
    )
    run = subprocess.run(
        [str(SACREBLEU), *map(str, args), "-f", "json", "-q"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(run.stdout)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- reading files ---------------------------------------------------------------------------


def test_read_text_strips_only_the_line_end(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("  two  spaces  \r\nline\u2028sep\n\nno newline".encode())
    assert read_text(path) == ["  two  spaces  ", "line\u2028sep", "", "no newline"]


def test_read_text_reads_gzip_like_gzip_does() -> None:
    lines = _lines("val.de")
    with gzip.open(multi30k_file("val.de.gz"), "rt", encoding="utf-8", newline="\n") as f:
        assert lines == [line.rstrip("\n") for line in f]
    assert len(lines) == 1014


def test_read_text_names_file_and_line_of_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok\nfine\nK\u00f6ln\n".encode("latin-1"))
    with pytest.raises(InputError) as info:
        read_text(path)
    assert (info.value.path, info.value.line) == (str(path), 3)
    assert f"{path}:3:" in str(info.value) and "UTF-8" in str(info.value)


def test_read_text_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.txt: file not found"):
        read_text(tmp_path / "nope.txt")


def test_read_inputs_line_count_mismatch_names_both_files(tmp_path: Path) -> None:
    ref = _write(tmp_path / "ref.txt", ["a", "b", "c"])
    hyp = _write(tmp_path / "hyp.txt", ["a", "b"])
    with pytest.raises(InputError) as info:
        read_inputs([hyp], [ref])
    message = str(info.value)
    assert str(hyp) in message and str(ref) in message
    assert "has 2 lines" in message and "has 3 lines" in message


def test_read_inputs_empty_hypothesis_file_is_an_error(tmp_path: Path) -> None:
    ref = _write(tmp_path / "ref.txt", ["a"])
    hyp = tmp_path / "hyp.txt"
    hyp.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_inputs([hyp], [ref])


# --- corpus scores ---------------------------------------------------------------------------


def test_identical_hypotheses_and_references_score_perfectly(ref: list[str]) -> None:
    scores = corpus_scores(ref, [ref], METRICS)
    assert scores["bleu"].score == pytest.approx(100.0)
    assert scores["chrf"].score == pytest.approx(100.0)
    assert scores["ter"].score == 0.0


def test_corpus_scores_equal_sacrebleu(ref: list[str], hyp: list[str]) -> None:
    scores = corpus_scores(hyp, [ref], METRICS)
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        expected = metric.corpus_score(hyp, [ref])
        assert scores[name].score == expected.score
        assert scores[name].name == expected.name
        assert scores[name].detail == str(expected)
        assert scores[name].signature == metric.get_signature().format()
    assert 50 < scores["bleu"].score < 90  # the perturbation is neither nothing nor everything


def test_several_references_equal_sacrebleu(ref: list[str]) -> None:
    ref2 = drop_words(ref, 2, 1)  # a second "reference" that differs on every other line
    hyp = drop_words(_lines("val.en"), 4)
    scores = corpus_scores(hyp, [ref, ref2], METRICS)
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        assert scores[name].score == metric.corpus_score(hyp, [ref, ref2]).score
        assert "nrefs:2" in scores[name].signature
    assert scores["bleu"].score != corpus_scores(hyp, [ref2], ["bleu"])["bleu"].score


def test_chrf_plus_plus(ref: list[str], hyp: list[str]) -> None:
    result = corpus_scores(hyp, [ref], ["chrf"], ScoreOptions(chrf_word_order=2))["chrf"]
    expected = CHRF(word_order=2).corpus_score(hyp, [ref])
    assert (result.name, result.score) == ("chrF2++", expected.score)
    assert "nw:2" in result.signature
    assert result.score != corpus_scores(hyp, [ref], ["chrf"])["chrf"].score


@pytest.mark.parametrize("tokenize", ["13a", "intl", "char", "none", "zh"])
def test_bleu_tokenizers_and_lowercase(tokenize: str) -> None:
    ref = _lines("test_2016_flickr.de")
    hyp = drop_words(ref, 3)
    options = ScoreOptions(tokenize=tokenize, lowercase=True)
    result = corpus_scores(hyp, [ref], ["bleu"], options)["bleu"]
    metric = BLEU(tokenize=tokenize, lowercase=True)
    assert result.score == metric.corpus_score(hyp, [ref]).score
    assert result.signature == metric.get_signature().format()
    assert "case:lc" in result.signature


def test_tokenizer_list_comes_from_sacrebleu() -> None:
    assert TOKENIZERS == tuple(BLEU.TOKENIZERS)
    with pytest.raises(ConfigError, match="13a, intl"):
        ScoreOptions(tokenize="moses")


def test_tokenizer_with_a_missing_optional_package_is_a_clear_error(
    ref: list[str], hyp: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sacrebleu.tokenizers import tokenizer_ja_mecab

    monkeypatch.setattr(tokenizer_ja_mecab, "MeCab", None)  # as without sacrebleu[ja]
    with pytest.raises(ConfigError, match=r"ja-mecab.*sacrebleu\[ja\]"):
        corpus_scores(hyp, [ref], ["bleu"], ScoreOptions(tokenize="ja-mecab"))


def test_ter_options_equal_sacrebleu(ref: list[str], hyp: list[str]) -> None:
    flags = dict(case_sensitive=True, no_punct=True, asian_support=True, normalized=True)
    options = ScoreOptions(**{f"ter_{k}": v for k, v in flags.items()})
    result = corpus_scores(hyp, [ref], ["ter"], options)["ter"]
    metric = TER(**flags)
    assert result.score == metric.corpus_score(hyp, [ref]).score
    assert "case:mixed" in result.signature and "punct:no" in result.signature
    assert "norm:yes" in result.signature and "asian:yes" in result.signature


def test_unknown_metric_lists_the_valid_ones(ref: list[str]) -> None:
    with pytest.raises(ConfigError, match="bleu, chrf, ter"):
        corpus_scores(ref, [ref], ["meteor"])


def test_scores_equal_the_sacrebleu_command(tmp_path: Path, ref: list[str], hyp: list[str]) -> None:
    ref2 = drop_words(ref, 2, 1)
    paths = [_write(tmp_path / n, x) for n, x in (("r1", ref), ("r2", ref2), ("h", hyp))]
    options = ScoreOptions(tokenize="intl", lowercase=True, chrf_word_order=2)
    ours = corpus_scores(hyp, [ref, ref2], METRICS, options)
    cli = _sacrebleu_cli(
        paths[0], paths[1], "-i", paths[2], "-m", "bleu", "chrf", "ter",
        "--tokenize", "intl", "-lc", "--chrf-word-order", "2", "-w", "6",
    )  # fmt: skip
    assert [c["name"] for c in cli] == [r.name for r in ours.values()]
    for result, expected in zip(ours.values(), cli, strict=True):
        assert round(result.score, 6) == expected["score"]
        assert result.signature == expected["signature"]


# --- sentence scores -------------------------------------------------------------------------


def test_sentence_scores_equal_sacrebleu(ref: list[str], hyp: list[str]) -> None:
    hyps, refs = hyp[:60], ref[:60]
    results = sentence_scores(hyps, [refs], METRICS)
    for name, metric in (("bleu", BLEU(effective_order=True)), ("chrf", CHRF()), ("ter", TER())):
        expected = [metric.sentence_score(h, [r]).score for h, r in zip(hyps, refs, strict=True)]
        assert list(results[name].scores) == expected
    assert "eff:yes" in results["bleu"].signature
    assert results["bleu"].scores[1] == pytest.approx(100.0)  # line 2 is untouched
    assert results["bleu"].scores[0] < 100.0


# --- paired tests ----------------------------------------------------------------------------


def test_paired_bootstrap_equals_the_sacrebleu_command(tmp_path: Path, ref: list[str]) -> None:
    systems = [drop_words(ref, 3), drop_words(ref, 3, 1), drop_words(ref, 6)]
    files = [_write(tmp_path / f"sys{i}", s) for i, s in enumerate(systems)]
    _write(tmp_path / "ref", ref)
    result = paired_test(systems, [ref], ["bleu"], n_samples=200, seed=7)
    # sacreBLEU's JSON writer fails on chrF's float32 means, so its command is asked for BLEU.
    cli = _sacrebleu_cli(
        tmp_path / "ref", "-i", *files, "-m", "bleu", "--paired-bs", "--paired-bs-n", "200",
        env={"SACREBLEU_SEED": "7"},
    )  # fmt: skip
    ours = result.scores["bleu"]
    for mine, theirs in zip(ours, (row["BLEU"] for row in cli), strict=True):
        assert (mine.score, mine.mean, mine.ci, mine.p_value) == (
            theirs["score"], theirs["mean"], theirs["ci"], theirs["p_value"],
        )  # fmt: skip
    assert 0.05 < ours[1].p_value < 1 and not ours[1].significant()  # similar quality
    assert ours[2].significant()  # half as many damaged lines
    assert result.signatures["bleu"].startswith("nrefs:1|bs:200|seed:7|")


def test_paired_tests_equal_sacrebleu_paired_test_api(ref: list[str], monkeypatch) -> None:
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)  # sacreBLEU's default seed, 12345
    systems = [drop_words(ref, 3), drop_words(ref, 3, 1)]
    for method in ("bs", "ar"):
        result = paired_test(systems, [ref], METRICS, method=method, n_samples=150)
        metrics = {
            m: cls(references=[ref]) for m, cls in zip(METRICS, (BLEU, CHRF, TER), strict=True)
        }
        ar_ci = 1000 if method == "ar" else -1
        test = PairedTest(list(zip("ab", systems, strict=True)), metrics, None, method, 150, ar_ci)
        signatures, table = test()
        for metric, name in zip(METRICS, signatures, strict=True):
            assert result.signatures[metric] == signatures[name].format()
            for mine, theirs in zip(result.scores[metric], table[name], strict=True):
                assert mine.score == theirs.score and mine.p_value == theirs.p_value
                assert (mine.mean, mine.ci) == (theirs.mean, theirs.ci)
                assert mine.mean is not None


def test_paired_ar_p_values_equal_the_sacrebleu_command(tmp_path: Path, ref: list[str]) -> None:
    systems = [drop_words(ref, 3), drop_words(ref, 3, 1), drop_words(ref, 6)]
    files = [_write(tmp_path / f"sys{i}", s) for i, s in enumerate(systems)]
    _write(tmp_path / "ref", ref)
    result = paired_test(systems, [ref], METRICS, method="ar", n_samples=200)
    cli = _sacrebleu_cli(
        tmp_path / "ref", "-i", *files, "-m", "bleu", "chrf", "ter", "--paired-ar",
        "--paired-ar-n", "200", env={"SACREBLEU_SEED": "12345"},
    )  # fmt: skip
    for metric, name in result.metric_names.items():
        assert [s.p_value for s in result.scores[metric]] == [row[name]["p_value"] for row in cli]
        assert [s.score for s in result.scores[metric]] == [row[name]["score"] for row in cli]


def test_paired_test_leaves_the_environment_alone(ref: list[str]) -> None:
    before = os.environ.get("SACREBLEU_SEED")
    systems = [ref[:100], drop_words(ref[:100], 2)]
    paired_test(systems, [ref[:100]], ["bleu"], n_samples=20, seed=3)
    assert os.environ.get("SACREBLEU_SEED") == before


def test_paired_test_rejects_bad_arguments(ref: list[str]) -> None:
    with pytest.raises(InputError, match="at least one other system"):
        paired_test([ref], [ref])
    with pytest.raises(ConfigError, match="seed=0"):
        paired_test([ref, ref], [ref], seed=0)
    with pytest.raises(ConfigError, match="bs, ar"):
        paired_test([ref, ref], [ref], method="t-test")
    with pytest.raises(InputError, match="reference stream 1 has 1014 lines"):
        paired_test([ref, ref[:10]], [ref])


# --- warnings --------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "de", "fr", "cs"])
def test_real_detokenized_text_gives_no_warnings(lang: str) -> None:
    assert check_hypotheses(_lines(f"val.{lang}")) == []


def test_tokenized_text_is_flagged(ref: list[str]) -> None:
    tokenized = [s.replace(",", " ,").replace(".", " .").replace("'s", " 's") for s in ref]
    (warning,) = check_hypotheses(tokenized, "hyp.txt")
    assert warning.startswith("hyp.txt:") and "tokenized" in warning


def test_sentencepiece_markers_empty_lines_and_copies_of_the_baseline(ref: list[str]) -> None:
    pieces = ["\u2581" + s.replace(" ", " \u2581") for s in ref[:10]] + ref[10:20] + [""]
    warnings = check_hypotheses(pieces, "hyp.txt", baseline=pieces)
    assert len(warnings) == 3
    assert "10 of 21 lines contain the SentencePiece marker" in warnings[0]
    assert "1 of 21 lines are empty" in warnings[1]
    assert "identical to the baseline" in warnings[2]
