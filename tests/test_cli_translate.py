"""``nmt translate`` through Typer's CliRunner: one output line per input line, stdout holds only
translations, errors are one line with file:line, and -o never leaves a half-written file."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli.translate
from cli.main import app
from nmt.config import DecodeConfig
from nmt.data.parallel import pad
from nmt.data.tokenizer import EOS_ID
from nmt.decode.forced import forced_scores
from nmt.decode.translate import Translation, Translator
from nmt.errors import InputError
from nmt.evaluate.score import corpus_scores

runner = CliRunner()  # result.stdout and result.stderr are kept apart


def invoke(*args: str | Path, input: str | bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["translate", *map(str, args)], input=input)


def assert_one_line_error(result, *parts: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # handled: no traceback
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for part in parts:
        assert part in errors[0]


@pytest.fixture(scope="module")
def inputs(multi30k) -> list[str]:
    lines = multi30k("test_2016_flickr", "de", 12)
    return ["", *lines[:5], "", "", *lines[5:], "   ", ""]  # blank lines anywhere


@pytest.fixture(scope="module")
def expected(tiny_run: Path, inputs: list[str]) -> list[str]:
    """What the library gives for the same lines with beam 2."""
    translator = Translator.load(tiny_run, DecodeConfig(beam_size=2), device="cpu")
    return [t.text for t in translator.translate(inputs)]


def write_input(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_n_lines_in_n_lines_out_in_order(
    tiny_run: Path, tmp_path: Path, inputs: list[str], expected: list[str]
) -> None:
    src = write_input(tmp_path / "in.de", inputs)
    result = invoke(src, "-m", tiny_run, "--beam-size", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == "".join(line + "\n" for line in expected)  # translations only
    assert len(result.stdout.splitlines()) == len(inputs)
    assert [bool(line.strip()) for line in result.stdout.splitlines()] == [
        bool(line.strip()) for line in inputs
    ]


def test_stdin_to_stdout(tiny_run: Path, inputs: list[str], expected: list[str]) -> None:
    text = "".join(line + "\n" for line in inputs)
    result = invoke("-", "-m", tiny_run, "--beam-size", "2", "--device", "cpu", input=text)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == expected


def test_output_file(tiny_run: Path, tmp_path: Path, inputs: list[str], expected: list[str]):
    src, out = write_input(tmp_path / "in.de", inputs), tmp_path / "out" / "hyp.en"
    result = invoke(src, "-m", tiny_run, "-o", out, "--beam-size", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_text(encoding="utf-8").splitlines() == expected
    assert [p.name for p in out.parent.iterdir()] == ["hyp.en"]  # no temporary file left


def test_scores_and_nbest_formats(tiny_run: Path, tmp_path: Path, inputs: list[str]) -> None:
    src = write_input(tmp_path / "in.de", inputs[1:4])
    result = invoke(src, "-m", tiny_run, "--beam-size", "3", "--scores", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r) == 2 for r in rows)
    result = invoke(src, "-m", tiny_run, "--beam-size", "3", "--nbest", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")] + [
        ("3", "0"),
        ("3", "1"),
    ]
    for first, second in zip(rows[::2], rows[1::2]):
        assert first[4] != second[4]
        assert float(first[2]) >= float(second[2])  # ranked by the normalised score
        assert float(first[2]) >= float(first[3])  # log-probability / penalty >= 1
    args = ["--beam-size", "3", "--nbest", "2", "--nbest-format", "moses", "--device", "cpu"]
    result = invoke(src, "-m", tiny_run, *args)
    assert result.exit_code == 0, result.output
    moses = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [m[0] for m in moses] == ["0", "0", "1", "1", "2", "2"]
    assert [m[1] for m in moses] == [r[4] for r in rows]
    assert [m[2] for m in moses] == [f"LogProb= {r[3]}" for r in rows]
    assert [m[3] for m in moses] == [r[2] for r in rows]


@pytest.mark.parametrize("nbest_format", ["tsv", "moses"])
def test_an_explicit_nbest_1_with_a_format_writes_the_best_in_that_format(
    tiny_run: Path, tmp_path: Path, inputs: list[str], nbest_format: str
) -> None:
    """``--nbest 1 --nbest-format F``: one n-best line per input, the best translation, in
    format F (it was refused as if --nbest had not been given); ``--nbest 1`` alone gives
    plain translations."""
    src = write_input(tmp_path / "in.de", inputs[1:4])
    base = [src, "-m", tiny_run, "--beam-size", "3", "--device", "cpu"]
    plain = invoke(*base)
    assert plain.exit_code == 0, plain.output
    assert invoke(*base, "--nbest", "1").stdout == plain.stdout
    listed = invoke(*base, "--nbest", "1", "--nbest-format", nbest_format)
    assert listed.exit_code == 0, listed.output
    texts = plain.stdout.splitlines()
    if nbest_format == "tsv":
        rows = [line.split("\t") for line in listed.stdout.splitlines()]
        assert [(r[0], r[1], r[4]) for r in rows] == [
            (str(n), "0", text) for n, text in enumerate(texts, start=1)
        ]
    else:
        rows = [line.split(" ||| ") for line in listed.stdout.splitlines()]
        assert [(r[0], r[1]) for r in rows] == [(str(n), text) for n, text in enumerate(texts)]
        assert all(r[2].startswith("LogProb= ") for r in rows)


class FakeTranslator:
    """Yields one result per line; optionally fails after ``fail_after`` lines."""

    def __init__(self, out: Path | None = None, fail_after: int | None = None):
        self.out, self.fail_after = out, fail_after

    def translate(self, lines) -> Iterator[Translation]:  # type: ignore[no-untyped-def]
        for number, line in enumerate(lines, start=1):
            if number == self.fail_after:
                raise InputError("something went wrong", "in.de", number)
            if self.out is not None:
                assert not self.out.exists()  # nothing is written before the end
            yield Translation(line.upper(), -1.0, [(line.upper(), -1.0)])


def test_options_reach_the_library(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((args, kwargs))
        return FakeTranslator()

    monkeypatch.setattr(cli.translate, "load_translator", fake_load)
    src = write_input(tmp_path / "in.de", ["a", "", "b"])
    result = invoke(
        src,
        "-m",
        tmp_path / "model",
        "--beam-size",
        "7",
        "--length-penalty",
        "0.6",
        "--max-len-a",
        "2",
        "--max-len-b",
        "5",
        "--batch-tokens",
        "900",
        "--batch-size",
        "9",
        "--nbest",
        "1",
        "--weights",
        "last.safetensors",
        "--device",
        "cpu",
        "--strict",
        "--workers",
        "3",
        "--tgt-lang",
        "en",
    )
    assert result.exit_code == 0, result.output
    decode = DecodeConfig(
        beam_size=7,
        length_penalty=0.6,
        max_len_a=2.0,
        max_len_b=5,
        nbest=1,
        batch_tokens=900,
        batch_size=9,
    )
    args = (tmp_path / "model", decode, "auto", "cpu", "last.safetensors")
    options = {"strict": True, "dtype": "fp32", "quantize": None, "workers": 3}
    assert calls == [(args, {**options, "ensemble_weights": None, "tgt_lang": "en"})]
    assert result.stdout == "A\n\nB\n"


def test_failure_midway_leaves_no_partial_output(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "hyp.en"
    fake = FakeTranslator(out, fail_after=3)
    monkeypatch.setattr(cli.translate, "load_translator", lambda *args, **kwargs: fake)
    src = write_input(tmp_path / "in.de", ["a", "b", "c", "d"])
    result = invoke(src, "-m", tmp_path, "-o", out)
    assert_one_line_error(result, "in.de:3: something went wrong")
    assert not out.exists()
    out.write_text("previous\n", encoding="utf-8")  # an older output stays as it was
    result = invoke(src, "-m", tmp_path, "-o", out)
    assert result.exit_code == 1
    assert out.read_text(encoding="utf-8") == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyp.en", "in.de"]


def test_non_utf8_input_line(tiny_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.de"
    src.write_bytes(b"Ein Hund.\nEine Katze.\nein \xff Vogel\nZwei Hunde.\n")
    out = tmp_path / "hyp.en"
    result = invoke(src, "-m", tiny_run, "-o", out, "--device", "cpu")
    assert_one_line_error(result, f"{src}:3:", "UTF-8")
    assert result.stdout == ""
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.de"]


def test_non_utf8_stdin_line(tiny_run: Path) -> None:
    result = invoke("-", "-m", tiny_run, "--device", "cpu", input=b"Ein Hund.\n\xfe\xff\n")
    assert_one_line_error(result, "<stdin>:2:", "UTF-8")


@pytest.mark.parametrize("name", ["spm.model", "model.safetensors", "config.json"])
def test_model_folder_lacking_a_file(tiny_run: Path, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for file in ("config.json", "spm.model", "model.safetensors"):
        if file != name:
            shutil.copy(tiny_run / file, folder / file)
    src = write_input(tmp_path / "in.de", ["Ein Hund."])
    result = invoke(src, "-m", folder, "--device", "cpu")
    assert_one_line_error(result, str(folder / name))
    assert result.stdout == ""


def test_missing_input_file(tiny_run: Path, tmp_path: Path) -> None:
    result = invoke(tmp_path / "absent.de", "-m", tiny_run, "--device", "cpu")
    assert_one_line_error(result, str(tmp_path / "absent.de"), "not found")


def test_ref_scores_the_output_on_stderr(tiny_run: Path, tmp_path: Path, inputs: list[str]):
    out, ref = tmp_path / "hyp.en", write_input(tmp_path / "ref.en", inputs)
    result = invoke(
        write_input(tmp_path / "in.de", inputs),
        "-m",
        tiny_run,
        "--beam-size",
        "1",
        "-o",
        out,
        "--ref",
        ref,
    )
    assert result.exit_code == 0, result.stderr
    hyps = out.read_text(encoding="utf-8").splitlines()
    expected = corpus_scores(hyps, [inputs], metrics=("bleu", "chrf"))
    assert expected["bleu"].detail in result.stderr and expected["chrf"].detail in result.stderr
    assert expected["bleu"].signature in result.stderr
    short = write_input(tmp_path / "short.en", inputs[:-1])
    never = tmp_path / "never.en"
    bad = invoke(
        write_input(tmp_path / "in2.de", inputs), "-m", tiny_run, "--ref", short, "-o", never
    )
    assert bad.exit_code == 1 and "short.en" in bad.stderr and "Traceback" not in bad.stderr
    assert not never.exists()  # refused before translating, not after
    assert "translate" not in bad.stderr  # no progress bar: nothing was translated


def test_alignment_and_target_prefix(tiny_run: Path, tmp_path: Path, inputs: list[str]) -> None:
    """``--alignment`` appends `` ||| `` and one ``i-j`` pair per target word (an empty line
    gives an empty alignment); ``--target-prefix`` starts each output with its line's prefix
    (an empty prefix line leaves that output free)."""
    src = write_input(tmp_path / "in.de", [*inputs[1:4], ""])
    prefixes = write_input(tmp_path / "prefix.en", ["A man", "", "Two people", ""])
    args = ["-m", tiny_run, "--beam-size", "2", "--device", "cpu"]
    result = invoke(src, *args, "--alignment", "--target-prefix", prefixes)
    assert result.exit_code == 0, result.output
    rows = [line.split(" ||| ") for line in result.stdout.split("\n")[:-1]]
    assert len(rows) == 4 and all(len(r) == 2 for r in rows)
    for line, (text, links) in zip([*inputs[1:4], ""], rows):
        pairs = [tuple(map(int, p.split("-"))) for p in links.split()]
        assert [j for _, j in pairs] == list(range(len(text.split())))
        assert all(0 <= i < len(line.split()) for i, _ in pairs)
    assert rows[0][0].startswith("A man") and rows[2][0].startswith("Two people")
    assert rows[3] == ["", ""]
    short = write_input(tmp_path / "short.en", ["A man", ""])
    result = invoke(src, *args, "--target-prefix", short)
    assert_one_line_error(result, f"{short}:3", "no target prefix for input line 3")
    result = invoke(src, *args, "--alignment", "--alignment-layer", "5")
    assert_one_line_error(result, "--alignment-layer 5: the model has 2", "choose 0 to 1")


@pytest.mark.kernels
def test_scores_are_the_teacher_forced_log_probabilities_of_the_output(
    tiny_run: Path, tmp_path: Path, inputs: list[str]
) -> None:
    """``--scores`` prints each output's log-probability: the model's teacher-forced score of
    that output (EOS included), computed here apart from the search that found it, within
    the 4 printed decimals and float32 noise (incremental against full decoding, other batch
    shapes: ~1e-5 per token; a dropped token or EOS moves it by far more)."""
    lines = inputs[1:6]
    src = write_input(tmp_path / "in.de", lines)
    result = invoke(src, "-m", tiny_run, "--beam-size", "3", "--scores", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == len(lines)
    translator = Translator.load(tiny_run, DecodeConfig(beam_size=3), device="cpu")
    forced = [logp for logp, _ in translator.score_targets(lines, [text for _, text in rows])]
    assert [float(score) for score, _ in rows] == pytest.approx(forced, abs=1e-3)
    assert all(logp < 0 for logp in forced)


def test_score_target_prints_one_score_pair_per_line(
    tiny_run: Path, tmp_path: Path, inputs: list[str]
) -> None:
    src = write_input(tmp_path / "in.de", inputs[1:5])
    targets = write_input(tmp_path / "hyp.en", ["A man.", "", "Two dogs play.", "A woman"])
    result = invoke(src, "-m", tiny_run, "--device", "cpu", "--score-target", targets)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 4 and all(len(r) == 2 for r in rows)
    # Each pair: the model's teacher-forced log-probability of the target (EOS included),
    # and that over the GNMT penalty ((5 + n) / 6) ** 1.0 of its n pieces plus EOS (Wu et al.
    # 2016).
    translator = Translator.load(tiny_run, device="cpu")
    given = ["A man.", "", "Two dogs play.", "A woman"]
    ids = translator.tokenizer.encode_target(given)
    source = pad(translator.tokenizer.encode(inputs[1:5]), suffix=EOS_ID)
    forced = forced_scores(translator.model, source, ids)
    for (logp, norm), want, target in zip(rows, forced, ids):
        assert float(logp) == pytest.approx(want, abs=1e-4) and want < 0
        assert float(norm) == pytest.approx(want / ((5 + len(target) + 1) / 6), abs=1e-4)
    short = write_input(tmp_path / "short.en", ["A man."])
    result = invoke(src, "-m", tiny_run, "--device", "cpu", "--score-target", short)
    assert_one_line_error(result, f"{short}:2", "no target for input line 2")


def test_lines_cut_at_the_model_limit_are_named_in_one_warning(
    tiny_run: Path, tmp_path: Path, inputs: list[str]
) -> None:
    """25 of 27 lines are longer than the model takes: all are translated, and the warning
    counts 25 and lists the first 20 line numbers."""
    long = " ".join(inputs) * 12  # over the 1,023 tokens that max_positions leaves
    lines = [inputs[0], *[long] * 25, inputs[1]]
    result = invoke(write_input(tmp_path / "in.de", lines), "-m", tiny_run, "--beam-size", "1")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 27
    warning = " ".join(result.stderr.split())
    shown = ", ".join(str(n) for n in range(2, 22))
    assert f"25 input line(s) longer than the model's limit were cut: line {shown} ..." in warning
    src = write_input(tmp_path / "strict.de", lines[:3])
    strict = invoke(src, "-m", tiny_run, "--beam-size", "1", "--strict")
    assert_one_line_error(strict, f"error: {src}: input line 2 has ", "drop --strict")


def test_a_pipe_as_the_input_file_is_read_once(
    tiny_run: Path, inputs: list[str], expected: list[str]
) -> None:
    """``nmt translate /dev/stdin`` (or ``<(...)``): counting the lines for the progress bar
    once consumed the pipe, and the translation read nothing (no output, exit status 0)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "cli", "translate", "/dev/stdin", "-m", str(tiny_run),
         "--beam-size", "2", "--device", "cpu"],
        input="".join(line + "\n" for line in inputs), capture_output=True, text=True,
        cwd=Path(cli.__file__).resolve().parents[1], timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == expected


def test_weights_by_name_are_the_model_folders(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--weights last.safetensors`` is the model folder's file, also where the current
    folder holds a file of that name (which was loaded instead); a folder missing its weights
    is named once, not twice, when given as a relative path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "last.safetensors").write_bytes(b"not these")
    src = write_input(tmp_path / "in.de", ["Ein Hund."])
    result = invoke(src, "-m", tiny_run, "--weights", "last.safetensors", "--device", "cpu")
    assert result.exit_code == 0, result.output
    (tmp_path / "bare").mkdir()
    for file in ("config.json", "spm.model"):
        shutil.copy(tiny_run / file, tmp_path / "bare" / file)
    result = invoke(src, "-m", "bare", "--device", "cpu")
    assert_one_line_error(result, "error: bare/model.safetensors: weights file not found")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nbest-format", "moses"], "--nbest-format moses formats --nbest N lists: add"),
        (["--nbest-format", "tsv", "--beam-size", "2"], "--nbest-format tsv formats --nbest N"),
        (["--beam-size", "3", "--nbest", "2", "--scores"], "--nbest 2 lines carry each"),
        (["--nbest", "1", "--nbest-format", "tsv", "--scores"], "--nbest 1 lines carry each"),
        (["--nbest", "2", "--beam-size", "2", "--score-target", "in.de"], "drop --nbest 2"),
        (["--alignment", "--score-target", "in.de"], "drop --alignment"),
        (["--nbest-format", "xml", "--nbest", "2"], "--nbest-format xml: choose one of tsv"),
        (["--nbest", "1", "--nbest-format", "moses", "--alignment"], "have no alignment field"),
        (["--nbest", "0"], "--nbest 0 must be between 1"),
    ],
)
def test_options_the_output_would_ignore_are_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    """An option that the asked output would not use is an error naming it, before any
    model loads (no model folder exists here), not a silent no-op."""
    monkeypatch.chdir(tmp_path)
    write_input(tmp_path / "in.de", ["Ein Hund."])
    result = invoke("in.de", "-m", tmp_path / "no-model", *args)
    assert_one_line_error(result, message)


@pytest.mark.parametrize(
    ("args", "message", "internal"),
    [
        (["--beam-size", "2", "--nbest", "5"], "--nbest 5 must be between 1 and --beam-size 2",
         "nbest="),
        (["--max-len-b", "0"], "--max-len-b 0 must be at least 1", "max_len_a"),
        (["--max-len-a", "-1"], "--max-len-a -1.0 must be in [0, 1000.0]", "max_len_b"),
        (["--sampling-topk", "0", "--beam-size", "4"],
         "--sampling-topk 0 draws one output per sentence: set --beam-size 1 (it is 4)",
         "beam_size"),
        (["--sampling-topp", "0.5"], "--sampling-topp and --sampling-temperature apply only "
         "when sampling: set --sampling-topk to 0", "sampling_"),
    ],
)  # fmt: skip
def test_setting_errors_name_the_flags_typed(
    tmp_path: Path, args: list[str], message: str, internal: str
) -> None:
    """A setting refused by the library is reported in the command's option names, and a
    flag is blamed only for its own value."""
    src = write_input(tmp_path / "in.de", ["Ein Hund."])
    result = invoke(src, "-m", tmp_path / "no-model", *args)
    assert_one_line_error(result, message)
    assert internal not in result.stderr


def test_quantization_errors_name_quantization(tiny_run: Path, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.de", ["Ein Hund."])
    result = invoke(src, "-m", tiny_run, "--device", "cpu", "--quantization", "int16")
    assert_one_line_error(result, "--quantization 'int16': the only choice is int8")
    assert "quantize" not in result.stderr


def test_a_missing_weights_name_names_the_folder_looked_in(tiny_run: Path, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.de", ["Ein Hund."])
    result = invoke(src, "-m", tiny_run, "--device", "cpu", "--weights", "best.safetensors")
    assert_one_line_error(
        result, f"best.safetensors: weights file not found in {tiny_run}", "model.safetensors"
    )
