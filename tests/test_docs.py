"""The documentation against the code: every ``nmt ...`` command line in README.md and docs/
parses with the Typer app (each command, option and value exists, required ones given), the
ones that need no trained model run, and the generated CLI reference lists every command and
option."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 150
HISTORY = "docs/benchmarks.md"
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
# Shell operators that end a command (what follows a redirection is a file name).
OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "(", ")"}

runner = CliRunner()


def command_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, command)`` of every ``nmt`` command in the shell code blocks of a
    markdown file: continuation lines joined, comments dropped, each command of a pipeline
    (``cat x | nmt translate ...``) taken alone and cut at a redirection."""
    found: list[tuple[int, str]] = []
    fence: str | None = None
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        if fence not in SHELL_FENCES:
            continue
        start, text = pending if pending else (number, "")
        text += " " + stripped.removeprefix("$ ")
        if text.endswith("\\"):
            pending = (start, text[:-1])
            continue
        pending = None
        found += [(start, cmd) for cmd in split_commands(text)]
    return found


def split_commands(line: str) -> list[str]:
    """The ``nmt`` commands of one shell line, each as its words joined by spaces."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as exc:  # unbalanced quotes: fine in another tool's line (curl's JSON)
        if re.search(r"(^|[|;&(]\s*)nmt\s", line):
            raise AssertionError(f"cannot split {line!r}: {exc}") from exc
        return []
    commands, words = [], []
    for token in [*tokens, ";"]:
        if token in OPERATORS or set(token) <= set("|&;<>()"):
            if words and (words[0] == "nmt" or words[0].endswith("/nmt")):  # .venv/bin/nmt
                commands.append(shlex.join(["nmt", *words[1:]]))
            words = []
        else:
            words.append(token)
    return commands


def all_command_lines() -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)}:{number}", cmd)
        for path in DOCS
        for number, cmd in command_lines(path)
    ]


def resolve(args: list[str]) -> tuple[str, Any, list[str]]:
    """``(name, command, rest)``: the (sub)command that ``args`` (after ``nmt``) names."""
    command: Any = typer.main.get_command(app)
    name = "nmt"
    while hasattr(command, "commands") and args and not args[0].startswith("-"):
        if args[0] not in command.commands:
            raise AssertionError(f"{name} has no command {args[0]!r}")
        name, command, args = f"{name} {args[0]}", command.commands[args[0]], args[1:]
    return name, command, args


def hidden_names(command: Any) -> set[str]:
    return {
        opt
        for p in command.params
        if getattr(p, "hidden", False) and p.param_type_name == "option"
        for opt in (*p.opts, *p.secondary_opts)
    }


def needs_no_model(args: list[str]) -> bool:
    """Runs without a trained model, data or network: help, the version, the catalog."""
    return "--help" in args or args in (["--version"], ["data", "list"])


LINES = all_command_lines()


def test_the_docs_show_commands() -> None:
    """The extraction finds the commands of every guide (a broken fence would hide them)."""
    where = {loc.split(":")[0] for loc, _ in LINES}
    for page in ("README.md", "docs/getting-started.md", "docs/guides/translate.md"):
        assert page in where
    names = {resolve(shlex.split(cmd)[1:])[0] for _, cmd in LINES}
    visible = {name for name, _ in walk_commands(typer.main.get_command(app)) if name != "nmt"} - {
        "nmt data",
        "nmt import",
    }
    assert visible <= names, f"commands no page shows: {sorted(visible - names)}"


@pytest.mark.parametrize(("where", "line"), LINES, ids=[loc for loc, _ in LINES])
def test_every_documented_command_parses(where: str, line: str) -> None:
    """Each command line names a real command and passes its parser: known options (no
    deprecated spelling), values of the right type, required options given, no extra
    arguments."""
    name, command, args = resolve(shlex.split(line)[1:])
    old = [a.split("=")[0] for a in args if a.split("=")[0] in hidden_names(command)]
    # The benchmarks record the commands as they were run, old spellings included.
    assert not old or where.startswith(HISTORY), f"{where}: {line!r} uses the old spelling {old}"
    if "--help" in args or "--version" in args or hasattr(command, "commands"):
        return  # eager options: run by the test below
    try:
        command.make_context(name, list(args))
    except Exception as exc:  # click's usage errors, from Typer's own copy of click
        pytest.fail(f"{where}: {line!r}: {exc}")


RUNNABLE = [(loc, cmd) for loc, cmd in LINES if needs_no_model(shlex.split(cmd)[1:])]


@pytest.mark.parametrize(("where", "line"), RUNNABLE, ids=[loc for loc, _ in RUNNABLE])
def test_documented_commands_that_need_no_model_run(where: str, line: str) -> None:
    result = runner.invoke(app, shlex.split(line)[1:])
    assert result.exit_code == 0, f"{where}: {line!r} exited {result.exit_code}: {result.output}"
    assert result.output.strip()


def test_some_documented_commands_run() -> None:
    """The docs show at least the catalog and one --help, so the test above runs something."""
    shown = {tuple(shlex.split(cmd)[1:3]) for _, cmd in RUNNABLE}
    assert ("data", "list") in shown
    assert any("--help" in cmd for _, cmd in RUNNABLE)


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


def load_hook() -> Any:
    """docs/hooks/cli_reference.py, the MkDocs hook that writes the CLI reference."""
    path = ROOT / "docs" / "hooks" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def walk_commands(command: Any, name: str = "nmt") -> list[tuple[str, Any]]:
    out = [(name, command)]
    for sub_name, sub in getattr(command, "commands", {}).items():
        out += walk_commands(sub, f"{name} {sub_name}")
    return out


def test_cli_reference_lists_every_command_and_option() -> None:
    """The generated reference has a section per command, and in it every argument and
    option under each of its names (the old spellings in their own line)."""
    hook = load_hook()
    reference = hook.cli_reference()
    sections = dict(re.findall(r"^## `(nmt[^`]*)`\n(.*?)(?=^## `|\Z)", reference, re.M | re.S))
    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert hook.MARKER in page
    assert hook.on_page_markdown(page, page=None) != page
    for name, command in walk_commands(typer.main.get_command(app)):
        assert name in sections, f"no section for {name}"
        text = sections[name]
        for param in command.params:
            if param.param_type_name == "argument":
                assert f"`{param.name.upper()}`" in text, f"{name}: argument {param.name}"
            for opt in (*param.opts, *param.secondary_opts):
                if param.param_type_name == "option":
                    assert f"`{opt}`" in text, f"{name}: option {opt}"


def test_split_commands_reads_pipelines_and_redirections() -> None:
    line = "cat test.de | nmt translate -m runs/de-en > test.hyp.en  # stdin to stdout"
    assert split_commands(line) == ["nmt translate -m runs/de-en"]
    assert split_commands("make demo") == []


def test_readme_links_resolve() -> None:
    """The README's relative links name files of the repository (the site's own links are
    checked by mkdocs build --strict; the README is read on the forge, outside the site)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
