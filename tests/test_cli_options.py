"""One vocabulary of options across commands (README, "Options across commands"): ``-m`` is
``--model`` and ``-o`` is ``--output`` everywhere, ``--model`` is required where a command
reads a model, a single-value option given twice is an error, and old spellings still work
with a deprecation warning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import write_lines
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def commands() -> dict[str, Any]:
    """Every command of the app by its full name (``data get``, ``import marian``)."""
    out: dict[str, Any] = {}

    def walk(command: Any, prefix: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{prefix} {name}".strip())
        if not hasattr(command, "commands"):
            out[prefix] = command

    walk(typer.main.get_command(app), "")
    return out


def visible_options(command: Any) -> list[list[str]]:
    return [p.opts for p in command.params if p.param_type_name == "option" and not p.hidden]


def test_short_names_mean_the_same_in_every_command() -> None:
    """-m is --model, -o is --output, -r is --ref wherever they exist; the old names are
    not shown in --help."""
    every = commands()
    assert {"translate", "export", "average", "serve", "train", "prepare", "data get"} <= set(every)
    meaning = {"-m": "--model", "-o": "--output", "-r": "--ref"}
    for name, command in every.items():
        for opts in visible_options(command):
            for short, long in meaning.items():
                if short in opts:
                    assert long in opts, f"nmt {name}: {short} is {opts}"
            shown = set(opts)
            assert not shown & {"--out", "--out-dir", "--force", "--quantize"}, (name, opts)
    readers = ("translate", "export", "average", "serve")
    for name in readers:
        assert ["--model", "-m"] in visible_options(every[name]), name
    for name in ("train", "prepare", "average", "export", "import marian", "data get"):
        assert ["--output", "-o"] in visible_options(every[name]), name


@pytest.mark.parametrize(
    "args",
    [
        ["translate", "in.txt"],
        ["export", "-o", "out"],
        ["average", "-o", "out"],
    ],
)
def test_model_is_required(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--model" in result.stderr and ("Missing" in result.stderr or "missing" in result.stderr)


@pytest.mark.parametrize(
    "args, option",
    [
        (["translate", "-m", "x", "--beam-size", "5", "--beam-size", "3"], "--beam-size"),
        (["translate", "-m", "x", "--beam-size=5", "--beam-size", "3"], "--beam-size"),
        (["export", "-m", "a", "-m", "b", "-o", "out"], "-m"),
        (["export", "-m", "a", "--output", "x", "-o", "y"], "--output"),
        (["train", "--train", "t", "--lr", "1e-3", "--lr", "2e-3", "-o", "r"], "--lr"),
    ],
)
def test_a_single_value_option_given_twice_is_an_error(args: list[str], option: str) -> None:
    """Click would silently keep the last value; the command refuses before doing anything
    (no model is loaded: the folders named do not exist)."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert option in result.stderr and "given 2 times" in result.stderr


def test_an_ensemble_may_repeat_model(tiny_run: Path, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.de", ["Ein Hund ."])
    result = runner.invoke(
        app, ["translate", str(src), "-m", str(tiny_run), "-m", str(tiny_run), "--beam-size", "1"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1


def test_old_spellings_work_with_a_warning(tiny_run: Path, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.de", ["Ein Hund läuft .", "Zwei Männer ."])
    new = runner.invoke(app, ["translate", str(src), "-m", str(tiny_run), "--quantization", "int8"])
    old = runner.invoke(app, ["translate", str(src), "-m", str(tiny_run), "--quantize", "int8"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert old.stdout == new.stdout and len(new.stdout.splitlines()) == 2
    assert "--quantize is deprecated" in old.stderr and "--quantization" in old.stderr
    assert "deprecated" not in new.stderr

    averaged = runner.invoke(app, ["average", str(tiny_run), "--last", "1", "--allow-fewer",
                                   "--out", str(tmp_path / "avg")])  # fmt: skip
    assert averaged.exit_code == 0, averaged.output
    assert (tmp_path / "avg" / "model.safetensors").is_file()
    assert "positional RUN_DIR is deprecated" in averaged.stderr
    assert "--out is deprecated" in averaged.stderr

    hyp = write_lines(tmp_path / "hyp.en", ["A dog runs .", "Two men ."])
    scored = runner.invoke(app, ["score", str(hyp), "-r", str(hyp), "-m", "bleu", "--json"])
    assert scored.exit_code == 0, scored.output
    assert '"bleu"' in scored.stdout and "chrf" not in scored.stdout
    assert "-m (in nmt score) is deprecated" in scored.stderr


def test_old_and_new_spelling_together_is_an_error(tiny_run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    result = runner.invoke(app, ["export", "-m", str(tiny_run), "-o", str(a), "--out", str(b)])
    assert result.exit_code == 2
    assert "--out is its old spelling" in result.stderr
    assert not a.exists() and not b.exists()


def test_help_shows_every_option_text_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Typer renders help as Rich markup, where ``[model]`` or ``[default: 5]`` is a tag that
    vanished from ``nmt train --help`` and ``nmt translate --help``; every visible option's
    help text must appear whole (whitespace collapsed, one wide line per option)."""
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 4000)
    checked = 0
    for name, command in commands().items():
        result = runner.invoke(app, [*name.split(), "--help"])
        assert result.exit_code == 0, (name, result.output)
        shown = " ".join(result.output.split())
        for param in command.params:
            if param.param_type_name != "option" or param.hidden or not param.help:
                continue
            text = " ".join(param.help.replace("\\[", "[").split())
            assert text in shown, (
                f"nmt {name} --help lost part of {param.opts[-1]}'s help: {text!r}"
            )
            checked += "[" in text
    assert checked >= 3  # train's --config, translate's --beam-size, prepare's --train


def test_an_os_error_is_one_line_not_a_traceback(tiny_run: Path, tmp_path: Path) -> None:
    """An output path through a file (or a full disk, a read-only folder) is the operating
    system's error, named with its path in one line, exit status 1."""
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    out = tmp_path / "afile" / "avg"
    result = runner.invoke(app, ["average", "-m", str(tiny_run), "-o", str(out), "--last", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"error: {out}: Not a directory; check the path" in " ".join(result.output.split())


TABLE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"


def expand(cell: str) -> list[str]:
    """The options a table cell names: `--max-len-a/-b` is --max-len-a and --max-len-b."""
    names: list[str] = []
    for code in re.findall(r"`([^`]+)`", cell):
        first, *rest = code.split()[0].split("/")
        if not first.startswith("-"):
            continue
        names.append(first)
        stem = first[: first.rindex("-")]
        names += [stem + r[r.index("-", 1) :] if r.count("-") > 1 else stem + r for r in rest]
    return names


def top_level(cell: str) -> list[str]:
    """``a (x, y), b`` split at the commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in cell:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [*parts, current.strip()] if current.strip() else parts


def table_claims() -> list[tuple[str, str]]:
    """``(command, option)`` for every command that the option table of docs/reference/cli.md
    says takes an option: a command alone takes all of its row's options, ``command
    (`--a`, `--b`)`` only those; commands separated by ";" are read as by ",", and words
    that are not commands ("the same fields in serve's requests") are left out."""
    every = commands()
    claims = []
    text = TABLE.read_text(encoding="utf-8").split("## Options across commands")[1]
    for row in text.split("<!--")[0].splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("meaning", "---"):
            continue
        options = expand(cells[1])
        for entry in top_level(cells[2].replace(";", ",")):
            name = entry.split(" (")[0].strip()
            if name not in every:
                continue
            inner = re.search(r"\((.*)\)", entry)
            named = expand(inner.group(1)) if inner else []
            for option in named if named and named[0].startswith("--") else options:
                claims.append((name, option))
    return claims


def test_the_option_table_lists_only_options_the_commands_have() -> None:
    """docs/reference/cli.md's "Options across commands" table claims an option for a
    command only where the command takes it (it listed --dtype and --batch-size for serve)."""
    every = commands()
    claims = table_claims()
    assert ("serve", "--device") in claims and ("translate", "--max-len-b") in claims
    wrong = [
        (name, option)
        for name, option in claims
        if not any(option in p.opts for p in every[name].params)
    ]
    assert wrong == []


def test_config_errors_are_rendered_in_the_flags_typed() -> None:
    """The CLI renders a ConfigError (written in the library's field names) in the command's
    flags; ``nmt train``, which also reads a config file, renames only the options typed, so
    that an error in a file's value keeps the file's key."""
    from cli.console import flag_names, option_flags
    from cli.train import train
    from cli.translate import translate

    flags = option_flags(translate, {})
    assert flags["beam_size"] == "--beam-size" and flags["quantize"] == "--quantization"
    message = "nbest=5 must be between 1 and beam_size=2; set sampling_topk to 0"
    assert flag_names(message, flags) == (
        "--nbest 5 must be between 1 and --beam-size 2; set --sampling-topk to 0"
    )
    assert flag_names("/runs/max_len_a/x: model folder", flags) == "/runs/max_len_a/x: model folder"
    typed = option_flags(train, {"lr": 0.5})
    assert flag_names("lr=0.5 must be finite; batch_tokens=3", typed) == (
        "--lr 0.5 must be finite; batch_tokens=3"
    )
