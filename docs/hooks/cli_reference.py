"""MkDocs hooks: the CLI reference page, generated from the Typer app at build time so that it
cannot drift, and the API pages' docstrings cleaned of Sphinx role names.

MkDocs loads this file as a hook (``hooks:`` in mkdocs.yml): :func:`on_page_markdown` replaces
the marker :data:`MARKER` in ``reference/cli.md`` with :func:`cli_reference`, which walks the
Click command that Typer builds (``typer.main.get_command``) and writes one section per
command: its help, its usage line, and a table of its arguments and options with their types
and defaults. Hidden parameters (the old spellings that still work, with a warning) are listed
under each table. tests/test_docs.py checks that every command and option appears.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import typer.main

MARKER = "<!-- cli-reference -->"
# The docstrings cross-reference in Sphinx's roles (:class:`Translator`), which mkdocstrings
# leaves as text before the code; the API pages show the name alone.
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(<code>)")


# Typer builds its commands with its own copy of Click (typer._click), so the commands and
# parameters are read by their attributes (``commands``, ``param_type_name``, ``opts``).
Command = Any


def walk(command: Command, path: tuple[str, ...] = ("nmt",)) -> Iterator[tuple[str, Command]]:
    """Every command under ``command``, depth first in the app's order, as ``("nmt data get",
    command)``; groups come before their subcommands."""
    yield " ".join(path), command
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            yield from walk(sub, (*path, name))


def app_command() -> Command:
    """The Click command of ``nmt`` (cli.main.app)."""
    from cli.main import app

    return typer.main.get_command(app)


def _plain(text: str | None) -> str:
    # CheckedCommand escapes help texts for Rich (``\[``); the reference shows them as written.
    return " ".join((text or "").replace("\\[", "[").split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _names(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{(param.metavar or param.name or '').upper()}`"
    names = [*param.opts, *param.secondary_opts]
    return ", ".join(f"`{n}`" for n in sorted(names, key=lambda n: (n.startswith("--"), n)))


def _is_flag(param: Any) -> bool:
    return param.param_type_name == "option" and bool(param.is_flag)


def _type(param: Any, ctx: Any) -> str:
    if _is_flag(param):
        return "flag"
    kind = str(param.display_type_rich(ctx) or "").strip("<>")
    return f"{kind}, repeatable" if param.multiple else kind


def _default(param: Any) -> str:
    default = param.default
    if param.required:
        return "required"
    if default is None or default in ((), "-") or (_is_flag(param) and default is False):
        return "stdin" if default == "-" else ""
    return f"`{default}`"


def command_markdown(name: str, command: Command) -> str:
    """One command's section: heading, help, usage, parameter table, hidden old spellings."""
    lines = [f"## `{name}`", "", _plain(command.help) or "", ""]
    if hasattr(command, "commands"):
        subs = [n for n, c in command.commands.items() if not c.hidden]
        lines += [f"Subcommands: {', '.join(f'`{name} {s}`' for s in subs)}.", ""]
    shown = [p for p in command.params if not getattr(p, "hidden", False)]
    hidden = [p for p in command.params if getattr(p, "hidden", False)]
    ctx = command.context_class(command, info_name=name)
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines += ["```text", f"{name} {usage}", "```", ""]
    lines += ["| parameter | type | default | what |", "|---|---|---|---|"]
    for p in shown:
        cells = [_names(p), _type(p, ctx), _default(p), _plain(getattr(p, "help", None))]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("| `--help` | flag | | Show the help and exit. |")
    if hidden:
        old = ", ".join(_names(p) for p in hidden)
        lines += ["", f"Old spellings, still accepted with a deprecation warning: {old}."]
    return "\n".join([*lines, ""])


def cli_reference(command: Command | None = None) -> str:
    """The markdown of every command of ``command`` (default: the ``nmt`` app)."""
    root = command or app_command()
    return "\n".join(command_markdown(name, cmd) for name, cmd in walk(root))


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """MkDocs hook: fill the CLI reference page's marker."""
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """MkDocs hook: drop the Sphinx role names left before cross-references in docstrings."""
    return SPHINX_ROLE.sub(r"\1", html)
