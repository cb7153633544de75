"""`raytag predict`: tag audio files with an artifact; failures and the output written."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape

from raytag.predict import failures_path, save_outputs, tag_inputs


def predict_command(artifact: Path, inputs: list[Path], out: Optional[Path] = None,
                    format: str = "csv", batch_size: int = 32, compile: bool = False) -> dict:
    tagged = tag_inputs(artifact, inputs, format=format, batch_size=batch_size, out=out, compile=compile)
    console = Console(stderr=True)
    failures, files = tagged.failures, tagged.files
    if len(failures):
        # JSON output carries its failures itself
        where_listed = str(failures_path(out)) if format == "csv" else "in the JSON's failures"
        # escape: file names and reasons are text ("[live] take.wav"), not rich markup
        console.print(f"[yellow]{len(failures)} of {len(files)} file(s) could not be read and are "
                      f"not in the output[/] (listed {escape(where_listed)}):")
        for rec in failures.head(10).itertuples():
            console.print(f"  {escape(str(rec.file))}: {escape(str(rec.reason))}")
        if len(failures) > 10:
            console.print(f"  ... and {len(failures) - 10} more")
    written, fail_file = save_outputs(tagged, out, format)
    where = written if written is not None else "stdout"
    console.print(f"tagged {len(tagged.probs)} file(s) with {len(tagged.artifact.members)} member(s) "
                  f"({tagged.artifact.combiner}); wrote [bold]{escape(str(where))}[/]")
    return {"written": written, "tagged": len(tagged.probs), "failed": len(failures), "failures_file": fail_file}
