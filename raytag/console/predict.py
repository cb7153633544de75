"""`raytag predict`: tag audio files with an artifact; failures and the output written."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.markup import escape

from raytag.console import output_console
from raytag.predict import failures_path, output_format, save_outputs, tag_inputs


def predict_command(artifact: Path, inputs: list[Path], out: Optional[Path] = None,
                    format: Optional[str] = None, batch_size: int = 32, compile: bool = False) -> dict:
    """`format` None: json for an --out ending in .json, else csv; `out` "-": stdout."""
    format = output_format(format, out)
    tagged = tag_inputs(artifact, inputs, format=format, batch_size=batch_size, out=out, compile=compile)
    console = output_console(stderr=True)
    failures, files = tagged.failures, tagged.files
    if len(failures):
        # JSON output carries its failures itself; a CSV on stdout has no file beside it: all are printed
        listed = failures_path(out, format)
        where_listed = ("in the JSON's failures" if format == "json" else
                        "below" if listed is None else str(listed))
        shown = len(failures) if format == "csv" and listed is None else 10
        # escape: file names and reasons are text ("[live] take.wav"), not rich markup
        console.print(f"[yellow]{len(failures)} of {len(files)} file(s) could not be read and are "
                      f"not in the output[/] (listed {escape(where_listed)}):")
        for rec in failures.head(shown).itertuples():
            console.print(f"  {escape(str(rec.file))}: {escape(str(rec.reason))}")
        if len(failures) > shown:
            console.print(f"  ... and {len(failures) - shown} more")
    written, fail_file = save_outputs(tagged, out, format)
    where = written if written is not None else "stdout"
    console.print(f"tagged {len(tagged.probs)} file(s) with {len(tagged.artifact.members)} member(s) "
                  f"({tagged.artifact.combiner}); wrote [bold]{escape(str(where))}[/]")
    return {"written": written, "tagged": len(tagged.probs), "failed": len(failures), "failures_file": fail_file}
