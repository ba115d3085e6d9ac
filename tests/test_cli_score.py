"""``nmt score`` through Typer's CliRunner: exit codes, stdout/stderr, and the library calls."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import cli.score
from nmt.evaluate.score import (
    METRICS,
    ScoreOptions,
    corpus_scores,
    read_text,
    sentence_scores,
)
from nmt.evaluate.significance import paired_test


def _app() -> typer.Typer:
    """``cli.main.app`` once every command module it registers exists, else a stand-in."""
    others = ("cli.data", "cli.train", "cli.translate")
    if all(importlib.util.find_spec(name) is not None for name in others):
        from cli.main import app

        return app
    # Some other command modules are still being written, so cli.main cannot be imported yet:
    # test the same command function under the same "score" name on a private app.
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("score")(cli.score.score)
    return app


APP = _app()
# typer's CliRunner keeps result.stdout and result.stderr apart (result.output mixes them).
runner = CliRunner()


def drop_words(lines: list[str], every: int, offset: int = 0) -> list[str]:
    """Every ``every``-th line (from ``offset``) keeps only every second word."""
    return [" ".join(s.split()[::2]) if i % every == offset else s for i, s in enumerate(lines)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ref_lines(multi30k_dir: Path) -> list[str]:
    return read_text(multi30k_dir / "test_2016_flickr.en.gz")


@pytest.fixture
def files(tmp_path: Path, ref_lines: list[str]) -> dict[str, Path]:
    return {
        "ref": _write(tmp_path / "ref.en", ref_lines),
        "ref2": _write(tmp_path / "ref2.en", drop_words(ref_lines, 2, 1)),
        "hyp": _write(tmp_path / "hyp.en", drop_words(ref_lines, 3)),
        "better": _write(tmp_path / "better.en", drop_words(ref_lines, 9)),
    }


def invoke(*args: str | Path):
    return runner.invoke(APP, ["score", *map(str, args)])


def test_json_equals_the_library(files: dict[str, Path], ref_lines: list[str]) -> None:
    result = invoke(files["hyp"], "-r", files["ref"], "--metrics", "bleu,chrf,ter", "--json")
    assert result.exit_code == 0, result.output
    expected = corpus_scores(drop_words(ref_lines, 3), [ref_lines], METRICS)
    assert json.loads(result.stdout) == {k: asdict(v) for k, v in expected.items()}
    assert result.stderr == ""


def test_text_output_shows_every_score_with_its_signature(files: dict[str, Path]) -> None:
    result = invoke(files["hyp"], "-r", files["ref"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("BLEU = ") and lines[2].startswith("chrF2 = ")
    assert "BLEU signature: nrefs:1|case:mixed|eff:no|tok:13a" in lines[1]
    assert "chrF2 signature: nrefs:1|" in lines[3] and len(lines) == 4


def test_options_reach_the_library(files: dict[str, Path], monkeypatch) -> None:
    calls = []

    def fake(hyps, refs, metrics, options):
        calls.append((len(hyps), len(refs), metrics, options))
        return {}

    monkeypatch.setattr(cli.score, "corpus_scores", fake)
    result = invoke(
        files["hyp"], "-r", files["ref"], "-r", files["ref2"], "-m", "ter,chrf",
        "--tokenize", "intl", "--lowercase", "--chrf-word-order", "2", "--ter-no-punct",
        "--ter-case-sensitive", "--ter-asian-support", "--ter-normalized",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    options = ScoreOptions(
        tokenize="intl",
        lowercase=True,
        chrf_word_order=2,
        ter_no_punct=True,
        ter_case_sensitive=True,
        ter_asian_support=True,
        ter_normalized=True,
    )
    assert calls == [(1000, 2, ("ter", "chrf"), options)]


def test_several_references_and_chrf_plus_plus(
    files: dict[str, Path], ref_lines: list[str]
) -> None:
    args = [files["hyp"], "-r", files["ref"], "-r", files["ref2"], "-m", "chrf"]
    result = invoke(*args, "--chrf-word-order", "2", "--json")
    assert result.exit_code == 0, result.output
    refs = [ref_lines, drop_words(ref_lines, 2, 1)]
    options = ScoreOptions(chrf_word_order=2)
    expected = corpus_scores(drop_words(ref_lines, 3), refs, ["chrf"], options)["chrf"]
    assert json.loads(result.stdout)["chrf"] == asdict(expected)
    assert expected.name == "chrF2++" and "nrefs:2" in expected.signature


def test_paired_json_carries_every_number(files: dict[str, Path], ref_lines: list[str]) -> None:
    args = [files["hyp"], files["better"], "-r", files["ref"], "-m", "bleu,ter"]
    result = invoke(*args, "--paired-n", "100", "--seed", "5", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    systems = [drop_words(ref_lines, 3), drop_words(ref_lines, 9)]
    expected = paired_test(systems, [ref_lines], ["bleu", "ter"], n_samples=100, seed=5)
    assert [s["path"] for s in out["systems"]] == [str(files["hyp"]), str(files["better"])]
    assert [s["baseline"] for s in out["systems"]] == [True, False]
    assert out["systems"][1]["bleu"] == asdict(corpus_scores(systems[1], [ref_lines])["bleu"])
    paired = out["paired"]
    assert (paired["method"], paired["n_samples"], paired["seed"]) == ("bs", 100, 5)
    assert paired["signatures"] == expected.signatures
    for metric in ("bleu", "ter"):
        rows = paired["results"][metric]
        assert [{k: r[k] for k in ("score", "mean", "ci", "p_value")} for r in rows] == [
            asdict(s) for s in expected.scores[metric]
        ]
        assert [r["significant"] for r in rows] == [False, True]


def test_paired_table_marks_significant_differences(files: dict[str, Path]) -> None:
    args = [files["hyp"], files["better"], "-r", files["ref"], "-m", "bleu"]
    result = invoke(*args, "--paired", "ar", "--paired-n", "100")
    assert result.exit_code == 0, result.output
    assert "baseline" in result.stdout
    assert "0.0099 *" in result.stdout  # 1 / (100 + 1): no trial beat the real difference
    assert "approximate randomization, n=100, seed=12345" in result.stdout
    assert "BLEU signature: nrefs:1|bs:1000|ar:100|seed:12345|" in result.stdout


def test_line_count_mismatch_names_both_files_and_counts(
    tmp_path: Path, files: dict[str, Path], ref_lines: list[str]
) -> None:
    short = _write(tmp_path / "short.en", ref_lines[:-3])
    result = invoke(short, "-r", files["ref"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # handled: no traceback
    assert "Traceback" not in result.output and result.stdout == ""
    message = " ".join(result.stderr.split())
    assert f"{short}: has 997 lines but the reference {files['ref']} has 1000 lines" in message


def test_sentencepiece_markers_give_a_warning_on_stderr(
    tmp_path: Path, files: dict[str, Path], ref_lines: list[str]
) -> None:
    pieces = _write(tmp_path / "pieces.en", [s.replace(" ", " \u2581") for s in ref_lines])
    result = invoke(pieces, "-r", files["ref"], "--json")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "SentencePiece marker" in result.stderr
    assert str(pieces) in result.stderr
    assert set(json.loads(result.stdout)) == {"bleu", "chrf"}  # stdout stays pure JSON


def test_sentence_scores_one_json_line_per_hypothesis(
    files: dict[str, Path], ref_lines: list[str]
) -> None:
    result = invoke(files["hyp"], "-r", files["ref"], "--sentence", "--json", "-m", "bleu,ter")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = sentence_scores(drop_words(ref_lines, 3), [ref_lines], ["bleu", "ter"])
    assert [r["line"] for r in rows] == list(range(1, 1001))
    assert [r["bleu"] for r in rows] == list(expected["bleu"].scores)
    assert [r["ter"] for r in rows] == list(expected["ter"].scores)
    assert "BLEU signature: nrefs:1|case:mixed|eff:yes" in result.stderr


def test_sentence_scores_as_text(files: dict[str, Path]) -> None:
    result = invoke(files["hyp"], "-r", files["ref"], "--sentence", "-m", "bleu")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1000 and lines[1] == "100.00"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokenize", "moses"], "not a sacreBLEU tokenizer"),
        (["-m", "bleu,meteor"], "unknown metric(s) 'meteor'"),
        (["--sentence", "{hyp}"], "--sentence scores one hypothesis file; got 2"),
    ],
)
def test_bad_options_exit_1_with_one_line(
    files: dict[str, Path], args: list[str], message: str
) -> None:
    args = [a.format(hyp=files["hyp"]) for a in args]
    result = invoke(files["hyp"], "-r", files["ref"], *args)
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output


def test_bad_files_exit_1_naming_them(tmp_path: Path, files: dict[str, Path]) -> None:
    latin = tmp_path / "latin1.en"
    latin.write_bytes("ok\nK\u00f6ln\n".encode("latin-1"))
    empty = tmp_path / "empty.en"
    empty.write_bytes(b"")
    for path, message in (
        (tmp_path / "missing.en", "missing.en: file not found"),
        (latin, "latin1.en:2: not valid UTF-8"),
        (empty, "empty.en: is empty"),
    ):
        result = invoke(path, "-r", files["ref"])
        assert result.exit_code == 1
        assert message in result.stderr
