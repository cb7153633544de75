"""Make `raytag --help` read like the help of other well-kept CLIs (git, pip, ray).

Typer 0.29 labels every parameter with a Python type (`<bool>` on `--help`,
`<list[Path]>` on a list argument, `{artifact}` in the usage line), and it keeps the
source's line breaks inside every paragraph of a docstring but the first, so a
description can break mid-sentence. Here, once, at start-up:

- options show a click-style value name (TEXT, INTEGER, FLOAT, PATH, or the option's own
  `metavar`), flags show none; arguments appear in upper case (ARTIFACT, INPUTS...) in
  the usage line (the Arguments table keeps Typer's lower-case name), with no type label;
- each command's help is re-flowed: lines joined within a paragraph, paragraphs kept.

If a later Typer drops the hooks used here, help falls back to Typer's own look (the
test in tests/test_cli_help.py then fails and says so).
"""
from __future__ import annotations

import inspect
import re

import typer
import typer.core as tcore


def reflow(text: str | None) -> str | None:
    """Join the lines of each paragraph; keep blank-line paragraph breaks and indented blocks."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    out = []
    for para in paragraphs:
        if any(line.startswith(("    ", "\t", "\b")) for line in para.splitlines()):
            out.append(para)  # an example block: its lines are meant
        else:
            out.append(re.sub(r"\s*\n\s*", " ", para.strip()))
    return "\n\n".join(out)


_VALUE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN"}


def _option_value_name(self, ctx):
    if self.metavar is not None:
        return self.metavar
    if self.is_flag or self.count:
        return None
    label = str(_typer_display_type(self, ctx) or "").strip("<>")  # e.g. "int", "list[str]", "a|b"
    many = label.startswith("list[")
    label = label[5:-1] if many else label
    name = _VALUE_NAMES.get(label.lower(), f"[{label}]" if "|" in label else label.upper() or "VALUE")
    return name  # a list option is repeated (--set A --set B), as click shows it


_typer_display_type = None  # Typer's own type label, read to name the value


def _argument_name(self) -> str:
    name = self.metavar if self.metavar is not None else str(self.name).upper()
    return name + ("..." if self.nargs != 1 else "")


def _argument_usage(self) -> str:
    name = _argument_name(self)
    return name if self.required else f"[{name}]"


def install(app: typer.Typer) -> None:
    """Apply both fixes to `app` (call after every command is registered)."""
    option, argument = getattr(tcore, "TyperOption", None), getattr(tcore, "TyperArgument", None)
    global _typer_display_type
    if option is not None and hasattr(option, "display_type") and option.display_type_rich is not _option_value_name:
        _typer_display_type = option.display_type
        option.display_type_rich = _option_value_name
    if argument is not None and hasattr(argument, "_rich_display_name"):
        argument.display_type_rich = lambda self, ctx: None
        argument._rich_display_name = _argument_name
        argument._usage_display_name = _argument_usage
    app.info.help = reflow(app.info.help)
    for info in app.registered_commands:
        info.help = reflow(info.help or (inspect.getdoc(info.callback) if info.callback else None))
