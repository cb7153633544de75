"""One self-contained `report.html` per sweep, beside its leaderboard.

It gathers what the sweep left in `<storage>/<experiment>/`: the leaderboard (a table that
sorts on a click), search.png and importance.csv, the stage tables of the best trials
(with the filter's precision and recall where the truth was known), per-class lwlrap of
the best trial and of the ensemble (out-of-fold), the ensemble comparison chart and the
best trial's t-SNE picture. Images are embedded as data URIs and the page loads nothing
from elsewhere, so it opens offline and can be mailed. A part whose files are missing
says so instead of failing the page.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from raytag import __version__, storage
from raytag.ensemble.combiners import combine, rank_reference
from raytag.ensemble.job import (FINISHED, _finished_trials, _resolve_outputs, load_oof_truth, load_trial,
                                 truth_matrix)
from raytag.errors import RaytagError
from raytag.metrics import per_class_lwlrap
from raytag.search.leaderboard import board_metric

REPORT_NAME = "report.html"
BEST_TRIALS = 3  # stage tables shown


def report_path(exp_dir: str) -> str:
    return storage.join(exp_dir, REPORT_NAME)


def write_report_html(exp_dir: str) -> str:
    """Write `<exp_dir>/report.html` from what the sweep saved; returns its path."""
    exp_dir = str(exp_dir)
    board_path = storage.join(exp_dir, "leaderboard.csv")
    if not storage.exists(board_path):
        raise RaytagError(f"{board_path}: no leaderboard; run `raytag tune` (or `raytag report`) first")
    board = storage.read_csv(board_path)
    name = storage.basename(exp_dir)
    best = _best_trials(exp_dir, board)
    metric = board_metric(board)
    sections = [
        _section("Leaderboard", _leaderboard(board), "leaderboard"),
        _section("Search", _search(exp_dir, metric), "search"),
        _section(f"Stages of the best {len(best) or ''} trial(s) by {metric}".replace("  ", " "), _stages(best), "stages"),
        _section("Per-class lwlrap (out-of-fold)", _per_class(exp_dir, best), "per-class"),
        _section("Ensemble", _ensemble(exp_dir), "ensemble"),
        _section("t-SNE of the filter's embeddings (best trial)", _tsne(best), "tsne"),
    ]
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = _PAGE.format(title=html.escape(f"raytag sweep {name}"), name=html.escape(name),
                        meta=html.escape(f"{len(board)} trials; {shown_path(exp_dir)}; written {made} by raytag {__version__}"),
                        body="\n".join(sections), style=_STYLE, script=_SCRIPT)
    path = report_path(exp_dir)
    storage.write_text(path, page)
    return path


# ----------------------------------------------------------------------------- parts
def _best_trials(exp_dir: str, board: pd.DataFrame) -> list[dict]:
    """The best finished trials whose outputs can be found, by the leaderboard's own metric
    (cv_map3 on FSDKaggle2018): [{trial_id, metric, cv, outputs}]."""
    metric = board_metric(board)
    if not {"trial_id", metric, "outputs_dir"} <= set(board.columns):
        return []
    if "status" in board:
        board = board[board["status"].astype(str).str.lower().isin(FINISHED)]
    board = board.dropna(subset=[metric, "outputs_dir"]).sort_values(metric, ascending=False)
    out = []
    for rec in board.to_dict(orient="records"):
        outputs = _resolve_outputs(exp_dir, str(rec["outputs_dir"]))
        if outputs is not None:
            out.append({"trial_id": str(rec["trial_id"]), "metric": metric, "cv": float(rec[metric]),
                        "outputs": outputs})
        if len(out) == BEST_TRIALS:
            break
    return out


def _leaderboard(board: pd.DataFrame) -> str:
    shown = board.drop(columns=[c for c in ("outputs_dir", "order") if c in board.columns])
    return ('<p class="note">Click a column heading to sort by it; click again to reverse.</p>'
            + _table(shown, sortable=True, table_id="leaderboard-table"))


def _search(exp_dir: str, metric: str) -> str:
    parts = [_image(storage.join(exp_dir, "search.png"), f"{metric} over the trials and against the most important settings")]
    imp_path = storage.join(exp_dir, "importance.csv")
    if storage.exists(imp_path):
        imp = storage.read_csv(imp_path)
        parts.append("<h3>Importance of each setting (Optuna fANOVA)</h3>"
                     + _bars(imp.iloc[:, 0].astype(str).tolist(), imp.iloc[:, 1].astype(float).tolist()))
    else:
        parts.append('<p class="missing">No importance.csv: too few scored trials to estimate importance.</p>')
    return "\n".join(parts)


def _stages(best: list[dict]) -> str:
    if not best:
        return _missing("no finished trial with saved outputs")
    parts = []
    for t in best:
        path = storage.join(t["outputs"], "stages.csv")
        parts.append(f"<h3>{html.escape(t['trial_id'])} ({t['metric']} {t['cv']:.4f})</h3>")
        if not storage.exists(path):
            parts.append(_missing(f"{path} is missing"))
            continue
        stages = storage.read_csv(path)
        if not any(c.startswith("filter_precision") for c in stages.columns):
            parts.append('<p class="note">Filter precision/recall: not known (the dataset has no truth for the noisy clips).</p>')
        parts.append(_table(stages))
    return "\n".join(parts)


def _per_class(exp_dir: str, best: list[dict]) -> str:
    """Per-class lwlrap of the best trial and of the ensemble's combiner, weakest first."""

    if not best:
        return _missing("no finished trial with saved outputs")
    try:
        top = load_trial(best[0]["outputs"])
        truth = load_oof_truth(best[0]["outputs"], exp_dir)
        classes = top.classes
        y = truth_matrix(truth, top.oof.index, classes)
        keep = y.sum(axis=1) > 0
        scores, weights = per_class_lwlrap(y[keep], top.oof.to_numpy()[keep])
    except (RaytagError, OSError, KeyError, ValueError) as err:
        return _missing(f"per-class lwlrap could not be computed: {err}")
    columns = {f"best trial ({best[0]['trial_id']})": scores}
    # the ensemble's column on its own: when it cannot be computed, the best trial's stays
    summary_path = storage.join(exp_dir, "ensemble", "ensemble_summary.json")
    if storage.exists(summary_path):
        try:
            summary = json.loads(storage.read_text(summary_path))
            columns[f"ensemble ({summary['chosen']})"] = _ensemble_per_class(exp_dir, summary, truth, classes)
            note = ('<p class="note">The weighted ensemble is scored here with its final weights, fitted on '
                    'these same clips (in-sample); the comparison below gives its nested-CV score.</p>'
                    if summary["chosen"] == "weighted" else "")
        except (RaytagError, OSError, KeyError, ValueError) as err:
            note = _missing(f"the ensemble's per-class lwlrap could not be computed: {err}")
    else:
        note = '<p class="missing">No ensemble yet: run <code>raytag ensemble</code> to add its column.</p>'
    table = pd.DataFrame(columns, index=pd.Index(classes, name="class"))
    table["share of labels"] = weights
    table = table.sort_values(table.columns[1] if len(columns) > 1 else table.columns[0]).reset_index()
    head = ('<p class="note">Weakest classes first. "share of labels" is each class\'s weight in lwlrap.</p>')
    return head + note + _table(table, sortable=True, bar_columns=list(columns))


def _ensemble_per_class(exp_dir: str, summary: dict, truth: pd.DataFrame, classes: list) -> np.ndarray:
    """Per-class lwlrap of the ensemble's chosen combiner on the clips all its members predicted."""
    trials = [load_trial(o) for o in _member_outputs(exp_dir, summary)]
    common = trials[0].oof.index
    for t in trials[1:]:
        common = common.intersection(t.oof.index)
    common = common.sort_values()
    oof = np.stack([t.oof.loc[common, classes].to_numpy(np.float64) for t in trials])
    refs = [rank_reference(t.oof[classes].to_numpy(np.float64)) for t in trials]
    w = summary.get("weights") if summary["chosen"] == "weighted" else None
    probs = combine(summary["chosen"], oof, w, refs)
    y = truth_matrix(truth, common, classes)
    keep = y.sum(axis=1) > 0
    return per_class_lwlrap(y[keep], probs[keep])[0]


def _member_outputs(exp_dir: str, summary: dict) -> list[str]:
    """Each ensemble member's outputs folder: a trial of this sweep, or of an experiment it
    was built `--with` (named `<experiment>/<trial>`, as raytag.ensemble.job names them)."""
    found = _candidate_outputs(exp_dir, "")
    for other in summary.get("with") or []:
        found.update(_candidate_outputs(_find_experiment(exp_dir, str(other)), f"{storage.basename(other)}/"))
    out = []
    for tid in summary["members"]:
        if str(tid) not in found:
            raise RaytagError(f"ensemble member {tid}: its outputs are not found")
        out.append(found[str(tid)])
    return out


def _candidate_outputs(experiment: str, prefix: str) -> dict[str, str]:
    """{trial id as the ensemble names it: outputs folder} of an experiment's finished trials."""
    candidates, _, _ = _finished_trials(experiment, prefix=prefix)
    return {c.trial_id: c.outputs_dir for c in candidates}


def _find_experiment(exp_dir: str, other: str) -> str:
    """A `--with` experiment as it was given, else (a relative path given elsewhere, a moved
    storage) the folder of that name beside this sweep."""
    if storage.exists(other):
        return other
    return storage.join(storage.parent(exp_dir), storage.basename(other))


def _ensemble(exp_dir: str) -> str:
    table_path = storage.join(exp_dir, "ensemble", "comparison.csv")
    if not storage.exists(table_path):
        return _missing("no ensemble yet: run `raytag ensemble` for this sweep")
    table = storage.read_csv(table_path)
    return (_image(storage.join(exp_dir, "ensemble", "comparison.png"), "single models and ensembles")
            + _table(table, sortable=True))


def _tsne(best: list[dict]) -> str:
    if not best:
        return _missing("no finished trial with saved outputs")
    return _image(storage.join(best[0]["outputs"], "tsne_filter.png"), "t-SNE of the filter's embeddings")


def shown_path(path: str) -> str:
    """A storage path as the page shows it: a URI without its user:password@ and its ?options
    (which may hold keys); the page is meant to be mailed."""
    text = storage.normalize_uri(path)
    if not storage.is_uri(text):
        return text
    parts = urlsplit(text)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


_URI_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]*")


# ----------------------------------------------------------------------------- html pieces
def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _missing(why: str) -> str:
    why = _URI_IN_TEXT.sub(lambda m: shown_path(m.group(0)), why)  # the paths it names, without secrets
    return f'<p class="missing">Not available: {html.escape(why)}.</p>'


def _image(path: str, alt: str) -> str:
    if not storage.exists(path):
        return _missing(f"{path} is missing")
    data = base64.b64encode(storage.read_bytes(path)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _table(df: pd.DataFrame, sortable: bool = False, table_id: str = "", bar_columns=()) -> str:
    attrs = (' class="sortable"' if sortable else "") + (f' id="{table_id}"' if table_id else "")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, rec):
            sort_key = "" if _fmt(value) == "-" else (
                f' data-v="{float(value)!r}"' if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else "")
            text = html.escape(_fmt(value))
            if col in bar_columns and sort_key:
                width = max(0.0, min(1.0, float(value))) * 100
                text = f'<span class="cellbar" style="width:{width:.1f}%"></span>{text}'
            cells.append(f"<td{sort_key}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _bars(labels: list[str], values: list[float]) -> str:
    top = max([v for v in values if np.isfinite(v)] or [1.0]) or 1.0
    rows = "".join(
        f'<div class="hbar"><span class="hlabel">{html.escape(lab)}</span>'
        f'<span class="htrack"><span style="width:{max(0.0, v / top) * 100:.1f}%"></span></span>'
        f'<span class="hval">{v:.3f}</span></div>'
        for lab, v in zip(labels, values))
    return f'<div class="importance">{rows}</div>'


_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: .1em; } .meta, .note { color: #666; } .missing { color: #a05a00; }
section { margin: 2em 0; } img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; white-space: nowrap; position: relative; }
th { background: #f4f4f4; } table.sortable th { cursor: pointer; user-select: none; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
td[data-v] { text-align: right; font-variant-numeric: tabular-nums; }
.cellbar { position: absolute; left: 0; top: 0; bottom: 0; background: #cfe2f3; z-index: -1; }
.hbar { display: grid; grid-template-columns: 22em 1fr 4em; gap: .5em; align-items: center; margin: 2px 0; }
.htrack { background: #eee; height: .9em; } .htrack span { display: block; height: 100%; background: #1f77b4; }
.hval { text-align: right; font-variant-numeric: tabular-nums; }
"""

_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {
    const body = table.tBodies[0], asc = !th.classList.contains("asc");
    table.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
    th.classList.add(asc ? "asc" : "desc");
    const key = td => td.hasAttribute("data-v") ? parseFloat(td.dataset.v) : td.textContent;
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = key(a.cells[col]), y = key(b.cells[col]);
      const xm = x === "-", ym = y === "-";
      if (xm || ym) return xm - ym;  // missing values last either way
      const c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(r => body.appendChild(r));
  }));
});
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body>
<h1>raytag sweep {name}</h1>
<p class="meta">{meta}</p>
<nav><a href="#leaderboard">leaderboard</a> | <a href="#search">search</a> | <a href="#stages">stages</a> |
<a href="#per-class">per-class lwlrap</a> | <a href="#ensemble">ensemble</a> | <a href="#tsne">t-SNE</a></nav>
{body}
<script>{script}</script>
</body></html>
"""
