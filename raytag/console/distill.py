"""`raytag distill`: train one small model on the ensemble's soft predictions and print
what it learned beside its teacher."""
from __future__ import annotations

from typing import Optional

from rich.markup import escape
from rich.table import Table

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.console import output_console
from raytag.console.feature_cache import feature_cache_option
from raytag.ensemble.distill import DistillResult, StudentSettings, distill


def distill_command(experiment: str, storage: str = "results", data: Optional[str] = None,
                    feature_cache: Optional[str] = None, settings: StudentSettings = StudentSettings()) -> DistillResult:
    experiment = files.check_name(experiment, "EXPERIMENT")
    console = output_console(stderr=True)
    cache = feature_cache_option(feature_cache)
    result = distill(files.join(storage, experiment), settings, data=data, feature_cache=cache,
                     progress=True, say=console.print)
    s = result.scores
    view = Table(title=f"distilled student of {experiment} (test labels only reported, never used)")
    for col in ("model", "curated lwlrap", "test lwlrap"):
        view.add_column(col, justify="left" if col == "model" else "right")
    # out-of-fold clips only: the artifact's own predictions come from models that trained on the clip;
    # a fitted combiner's score is the ensemble job's nested one, its targets' beside it
    view.add_row("teacher (ensemble)",
                 _fmt(s.get("teacher_curated_oof_lwlrap"))
                 + f" ({s.get('teacher_cv_method') or 'OOF'}, {s.get('teacher_curated_oof_clips') or 0} clips)",
                 _fmt(s.get("teacher_test_lwlrap")))
    if s.get("targets_are"):
        view.add_row(f"its targets ({s['targets_are']})",
                     _fmt(s.get("targets_curated_oof_lwlrap")) + f" ({s.get('targets_curated_oof_clips', 0)} clips)",
                     "-")
    view.add_row(f"student ({result.student})",
                 _fmt(s.get("train_curated_lwlrap")) + " (trained on)", _fmt(s.get("test_lwlrap")))
    console.print(view)
    console.print(f"student vs the teacher's top labels: lwlrap {_fmt(s.get('agreement_lwlrap'))} on the training clips, "
                  f"{_fmt(s.get('test_agreement_lwlrap'))} on the test clips{_left_out(s)} (no labels used); "
                  f"targets: {result.label_weight:g} x the given labels + {1 - result.label_weight:g} x the teacher's "
                  f"({result.teacher_scale}, per {result.target_grain}; {result.n_oof} clips out-of-fold, {result.n_ensemble} from the artifact), {result.epochs} epochs, "
                  f"{result.seconds:.0f} s")
    shown = escape(str(result.artifact_path))  # a path is text, not rich markup
    console.print(f"artifact: [bold]{shown}[/]  (tag audio: raytag predict {shown} FILES...)")
    return result


def _left_out(scores: dict) -> str:
    """' (3 the teacher could not read left out)' where the test agreement skipped files."""
    n = scores.get("test_agreement_left_out")
    return f" ({n} the teacher could not read left out)" if n else ""


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"
