"""How results are shown on a terminal: the commands behind `raytag` (raytag.cli parses
the options; each command here calls the library, then prints what it returned) and the
rich tables they and the demo print. One module per command family, so that a command
imports only its own machinery (`raytag score` does not load torch or Ray).

Library modules below return results and print nothing but progress during long work
(the feature bar, the sweep's trial lines, the tagging bar, the ensemble's candidate
line), switched by their `progress` flag or `console` argument."""
from __future__ import annotations

from rich.console import Console

# Piped or redirected output is read later, grepped and copied from: this width is never
# reached, so rich neither cuts a name or path with "…" nor splits it across lines there.
PIPED_WIDTH = 1000


def output_console(stderr: bool = False) -> Console:
    """A console for a command's output: on a terminal, fitted to its width (wrapped, tables
    shrunk to fit); piped to a file or another program, as wide as its lines and tables are."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = PIPED_WIDTH
    return console
