"""`raytag ensemble` and `raytag pull`: the ensemble job and copying its artifact."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
from rich.markup import escape
from rich.table import Table

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.console import output_console
from raytag.ensemble.job import EnsembleResult, build_ensemble
from raytag.ensemble.pull import PullResult, pull


def ensemble_command(experiment: str, storage: str = "results", top: Optional[int] = 5,
                     min_cv: Optional[float] = None, also: Sequence[str] = ()) -> EnsembleResult:
    experiment = files.check_name(experiment, "EXPERIMENT")  # "fat2019/" is fat2019
    also = [files.check_name(name, "--with") for name in also]
    console = output_console(stderr=True)
    result = build_ensemble(files.join(storage, experiment), top=top, min_cv=min_cv, console=console,
                            also=[files.join(storage, name) for name in also])
    # the ranking metric first, lwlrap beside it
    scores = list(dict.fromkeys([result.metric, "cv_lwlrap"]))
    sweeps = " + ".join([experiment, *also])
    view = Table(title=f"ensemble of {sweeps}, ranked by {result.metric}")
    for col in ("name", "kind", *(f"CV {c[3:]}" for c in scores), "CV on", "test lwlrap", "weights"):
        # a trial's name folds on a narrow terminal rather than being cut with "…"
        view.add_column(col, overflow="fold" if col == "name" else "ellipsis")
    for r in result.table.to_dict(orient="records"):
        mark = " *" if r["chosen"] else ""
        view.add_row(f"{escape(str(r['name']))}{mark}", r["kind"], *(f"{r[c]:.4f}" for c in scores), r["cv_method"],
                     "-" if pd.isna(r["test_lwlrap"]) else f"{r['test_lwlrap']:.4f}", escape(str(r["weights"])))
    console.print(view)
    for s in result.skipped:
        # escape: names, reasons and paths are text, not rich markup
        console.print(f"left out {escape(str(s['trial_id']))}: {escape(str(s['reason']))}")
    console.print(f"chosen: [bold]{escape(str(result.chosen))}[/] (*, the best OOF {result.metric}); "
                  f"artifact: [bold]{escape(str(result.artifact_path))}[/]")
    console.print(f"table: {escape(str(result.table_path))}; chart: {escape(str(result.chart_path))}")
    return result


def pull_command(experiment: str, storage: str, to: str | Path) -> PullResult:
    experiment = files.check_name(experiment, "EXPERIMENT")  # "fat2019/", as `aws s3 ls` lists it
    console = output_console(stderr=True)
    result = pull(experiment, storage, to)
    if result.replaced is not None:  # the folder held another experiment: say what went
        old = result.replaced
        before = f"{old['experiment']} from {old.get('storage')}" if "experiment" in old else "an unknown experiment"
        gone = f"; removed its {', '.join(result.removed)}" if result.removed else ""
        console.print(f"note: {escape(str(to))} held {escape(str(before))}, now replaced by {escape(experiment)}"
                      f"{escape(gone)}", soft_wrap=True, highlight=False)
    console.print(
        f"pulled {experiment}: {len(result.copied)} file(s) copied, {len(result.skipped)} already "
        f"present and verified; artifact checksums OK"
    )
    shown = escape(str(result.artifact))  # a path is text, not rich markup
    console.print(f"artifact: [bold]{shown}[/]  (tag audio: raytag predict {shown} FILES...)")
    return result
