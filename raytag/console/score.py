"""`raytag score`: lwlrap (per class) or MAP@3 of a submission."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from raytag.console import output_console
from raytag.data.truth import few as _few
from raytag.scoring import score_files


def score_command(truth, submission, per_class: bool = False) -> dict:
    """`raytag score`: print lwlrap (2019, optionally per class) or MAP@3 (2018)."""
    result = score_files(Path(truth), Path(submission))
    out = output_console()
    err = output_console(stderr=True)
    if result.get("ignored"):
        err.print(f"note: {len(result['ignored'])} submission rows are truth clips with usage 'Ignored', not scored "
                  f"(as on Kaggle): {_few(result['ignored'])}")
    if result["extra"]:
        err.print(f"note: {len(result['extra'])} submission rows are not in the truth and were not scored: {_few(result['extra'])}")
    if result["metric"] == "map@3":
        out.print(f"MAP@3: {result['map@3']:.6f}  ({result['n_clips']} clips)")
        if per_class:
            err.print("note: --per-class applies to lwlrap (2019 form) only")
        return result
    if result["unlabelled"]:
        err.print(f"note: {len(result['unlabelled'])} truth clips have no label and are not scored: {_few(result['unlabelled'])}")
    out.print(f"lwlrap: {result['lwlrap']:.6f}  ({result['n_clips']} clips, {int(result['positives'].sum())} labels)")
    if per_class:
        table = Table(title="per-class lwlrap, worst first", caption="weight: share of all labels")
        for name, justify in (("class", "left"), ("positives", "right"), ("weight", "right"), ("lwlrap", "right")):
            table.add_column(name, justify=justify)
        order = np.lexsort((np.arange(len(result["classes"])), result["per_class"]))
        for j in order:
            if result["positives"][j] == 0:
                continue
            table.add_row(result["classes"][j], str(result["positives"][j]),
                          f"{result['weights'][j]:.4f}", f"{result['per_class'][j]:.4f}")
        out.print(table)
        absent = [c for c, n in zip(result["classes"], result["positives"]) if n == 0]
        if absent:
            out.print(f"classes with no positive clip in the truth (not scored): {_few(absent, 10)}")
    return result
