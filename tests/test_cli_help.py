"""`raytag --help` reads like other CLIs' help: no Python type labels, no `{arg}` in the
usage line, and no description broken mid-sentence by the source's line breaks."""
from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from raytag.cli import app

COMMANDS = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
PY_TYPES = re.compile(r"<(bool|str|int|float|path|list\[[^\]]*\]|[A-Za-z_.]+)>")


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_no_python_type_names(command):
    text = _help(*([command] if command else []))
    assert not PY_TYPES.search(text), PY_TYPES.search(text).group(0)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage


def test_values_are_named_like_click_and_flags_have_none():
    text = _help("predict")
    assert re.search(r"--batch-size\s+INTEGER", text) and re.search(r"--out\s+PATH", text)
    assert "ARTIFACT INPUTS..." in text
    assert re.search(r"--help\s+-h\s+Show this message", text)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_h_is_help_like_dash_dash_help(command):
    """`raytag predict -h` used to say "No such option: -h"."""
    args = [command] if command else []
    result = CliRunner().invoke(app, [*args, "-h"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    assert result.output == _help(*args)


def test_paragraphs_after_the_first_are_reflowed():
    text = " ".join(_help("serve").split())  # the panel's borders and wrapping aside
    assert "or the raw body; ?top=K) and answers its tags" in text
    raw = _help("serve")
    para = next(line for line in raw.splitlines() if "POST /tag takes" in line)
    assert "answers its tags" in para  # one line at 200 columns: the source's break is gone
