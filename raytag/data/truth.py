"""Truth files: the true labels of clips, read to score predictions, never to train on.

The one reader of every truth file, told apart by its columns:

    fname,labels             2019 form (labels comma-separated): a dataset's test_labels.csv
                             and train_noisy_truth.csv, the truth `raytag score` takes
    fname,label[,usage]      2018 form: one label per clip; rows with usage "Ignored" are
                             left out (Kaggle padded the 2018 test set with unscored clips)
    clip_id[,fname],labels   a trial's oof_truth.csv / test_truth.csv (raytag.training.outputs)

`read_truth(path, strict=...)` reads them. Its callers differ on purpose:
strict=True (`raytag score`, the ensemble job): every problem raises `TruthError` naming
the file and what to fix. strict=False (a dataset's optional truth files, reporting only):
a file that cannot be used is ignored (None) and rows with no, several (2018) or unknown
labels are dropped, each with a warning on the "raytag.data" logger, so a bad truth file
never stops a training run.

`truth_matrix` aligns a truth table to clip ids as a multi-hot matrix in class order.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from raytag import storage
from raytag.data.csvcheck import (describe_overlong, header_fields, read_rows, repeated_fields, repeated_names,
                                  unnamed_fields)
from raytag.data.labels import labels_to_matrix, parse_label_field
from raytag.errors import TruthError

log = logging.getLogger("raytag.data")

LAYOUT_2019 = "fat2019"
LAYOUT_2018 = "fsd2018"
_SHOW = 5  # how many offending names an error lists


@dataclass
class Truth:
    layout: str  # LAYOUT_2019 | LAYOUT_2018
    fnames: list[str]
    labels: list[tuple[str, ...]]  # 2018: exactly one label per clip
    # known classes, if the files tell: 2019 from a sample_submission.csv beside the truth,
    # 2018 every label in the truth file (unscored rows included)
    classes: Optional[list[str]] = None
    clip_ids: Optional[list[str]] = None  # a trial's truth files key clips by clip_id

    def table(self) -> pd.DataFrame:
        """DataFrame(clip_id (None when the file has none), fname, labels tuple)."""
        return pd.DataFrame({"clip_id": self.clip_ids if self.clip_ids is not None else [None] * len(self.fnames),
                             "fname": self.fnames, "labels": self.labels})


# ----------------------------------------------------------------------------- strict CSV
def few(names, n: int = _SHOW) -> str:
    """The first `n` names, comma-separated, and how many more there are."""
    names = [str(x) for x in names]
    more = f" ... and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def read_keyed_csv(path, what: str, error: type[Exception] = TruthError,
                   keys: Sequence[str] = ("fname",)) -> pd.DataFrame:
    """A CSV with one row per clip, everything as text, keyed by the first of `keys` it
    has (stripped, unique, never empty); `error` names the file and the problem otherwise.
    Used for truth files here and for submissions by raytag.scoring."""
    path = str(path)
    if storage.is_dir(path):
        raise error(f"{path}: is a folder; give the {what} CSV file itself")
    if not storage.exists(path):
        raise error(f"{what} file not found: {path}")
    try:
        text = storage.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{path}: the {what} file is not UTF-8 text ({err}); save the file as UTF-8") from None
    rows = read_rows(text, path)
    if rows.overlong:  # pandas would shift every row a column left: fnames would be labels
        raise error(f"{path}: {describe_overlong(rows.overlong)}")
    try:
        # everything as text: "None" or "NA" stay labels, and bad numbers can be reported as written;
        # row names (R's write.table) are pandas' index, dropped
        df = pd.read_csv(io.StringIO(rows.text), dtype=str, keep_default_na=False).reset_index(drop=True)
    except pd.errors.EmptyDataError:
        raise error(f"{path}: the {what} file is empty") from None
    except pd.errors.ParserError as err:
        raise error(f"{path}: not a readable CSV {what} file ({err})") from None
    df.columns = [str(c).strip() for c in df.columns]
    repeated = repeated_names(_header(df, path))  # pandas renamed them ("dog" -> "dog.1")
    if repeated:
        raise error(f"{path}: columns appear more than once in the {what} file: {few(repeated)}")
    key = next((k for k in keys if k in df.columns), None)
    if key is None:
        nor = f" (nor {' or '.join(repr(k) for k in keys[1:])})" if len(keys) > 1 else ""
        raise error(f"{path}: the {what} file has no '{keys[0]}' column{nor} (columns: {few(df.columns)})")
    if len(df) == 0:
        raise error(f"{path}: the {what} file has a header but no rows")
    for k in keys:
        if k in df.columns:
            df[k] = df[k].str.strip()
    dup = df[key][df[key].duplicated()].unique()
    if len(dup):
        raise error(f"{path}: {key} appears more than once in the {what} file: {few(dup)}")
    if (df[key] == "").any():
        raise error(f"{path}: {int((df[key] == '').sum())} rows of the {what} file have an empty {key}")
    return df


def _header(df: pd.DataFrame, path: str) -> list[str]:
    """The header as written (local files), else pandas' column names."""
    return header_fields(path) if not storage.is_uri(path) else list(df.columns)


def _sample_submission_classes(truth_path) -> Optional[list[str]]:
    """Class columns of a sample_submission.csv next to a 2019 truth file, if there is one."""
    if storage.is_uri(str(truth_path)):
        return None
    sample = Path(truth_path).parent / "sample_submission.csv"
    if not sample.is_file():
        return None
    try:
        cols = [str(c).strip() for c in pd.read_csv(sample, nrows=0).columns]
    except UnicodeDecodeError as err:
        raise TruthError(f"{sample}: not UTF-8 text ({err}); save the file as UTF-8 (it names the classes)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise TruthError(f"{sample}: not a readable sample submission ({err}); it names the classes") from None
    unnamed = unnamed_fields(sample)
    if unnamed:
        raise TruthError(f"{sample}: header field(s) {', '.join(map(str, unnamed))} have no name (a trailing "
                         "comma?); it names the classes")
    repeated = repeated_fields(sample)
    if repeated:
        raise TruthError(f"{sample}: class columns appear more than once: {few(repeated)}; it names the classes")
    return [c for c in cols if c != "fname"] if "fname" in cols and len(cols) > 1 else None


# ----------------------------------------------------------------------------- the reader
def read_truth(path, strict: bool = True, classes: Optional[Sequence[str]] = None) -> Optional[Truth]:
    """Read a truth file in any of the forms of the module doc (local path or URI).

    strict=True: any problem raises TruthError. strict=False: None when the file is
    missing or unusable, rows with no, several (2018) or unknown labels (not in
    `classes`, when given) or a repeated fname dropped; each with a warning."""
    if strict:
        return _read_strict(path)
    return _read_lenient(path, classes)


def _read_strict(path) -> Truth:
    df = read_keyed_csv(path, "truth", keys=("fname", "clip_id"))
    ids = df["clip_id"].tolist() if "clip_id" in df.columns else None
    if "labels" in df.columns:
        labels = [parse_label_field(s) for s in df["labels"]]
        return Truth(LAYOUT_2019, _fnames(df), labels, _sample_submission_classes(path), ids)
    if "label" in df.columns:
        all_labels = sorted({s.strip() for s in df["label"] if s.strip()})
        df = _scored_rows(df)
        labels, bad = _single_labels(df)
        if any(bad):
            names = [f for f, b in zip(_fnames(df), bad) if b]
            raise TruthError(f"{path}: a 2018 truth row needs exactly one label; rows with none or several: "
                             f"{few(names)}")
        # known classes: every label in the file, the unscored rows included
        return Truth(LAYOUT_2018, _fnames(df), labels, all_labels,
                     df["clip_id"].tolist() if ids is not None else None)
    raise TruthError(
        f"{path}: a truth file needs a 'labels' column (2019: comma-separated labels) "
        f"or a 'label' column (2018); found {few(df.columns)}"
    )


def _read_lenient(path, classes) -> Optional[Truth]:
    path = str(path)
    if not storage.exists(path) or storage.is_dir(path):
        return None
    try:
        text = storage.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        log.warning("%s ignored: not UTF-8 text (%s); save the file as UTF-8", path, err)
        return None
    rows = read_rows(text, path)
    if rows.overlong:  # left out, as rows with bad labels are: the others are read as usual
        log.warning("%s: %d rows with more fields than the header ignored; %s",
                    path, len(rows.overlong), describe_overlong(rows.overlong))
    try:
        df = pd.read_csv(io.StringIO(rows.text), dtype=str, keep_default_na=False).reset_index(drop=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        log.warning("%s ignored: not a readable CSV (%s)", path, err)
        return None
    df.columns = [str(c).strip() for c in df.columns]
    column = "labels" if "labels" in df.columns else "label" if "label" in df.columns else None
    if "fname" not in df.columns or column is None:
        log.warning("%s ignored: needs columns fname and labels", path)
        return None
    df["fname"] = df["fname"].str.strip()
    if column == "labels":
        layout, labels = LAYOUT_2019, [parse_label_field(s) for s in df["labels"]]
        ok = [bool(lab) for lab in labels]
    else:
        df = _scored_rows(df)
        labels, bad = _single_labels(df)
        layout, ok = LAYOUT_2018, [not b for b in bad]
    if classes is not None:
        vocab = set(classes)
        ok = [good and all(x in vocab for x in lab) for good, lab in zip(ok, labels)]
    if not all(ok):
        log.warning("%s: %d rows with no or unknown labels ignored", path, ok.count(False))
    ok = pd.Series(ok, index=df.index)
    keep = ok & ~df["fname"].where(ok).duplicated()  # a repeated fname: its first usable row
    _warn_repeats(path, df["fname"], labels, ok, keep)
    return Truth(layout, df["fname"][keep].tolist(), [lab for lab, k in zip(labels, keep) if k],
                 list(classes) if classes is not None else None)


def _warn_repeats(path, fnames: pd.Series, labels: list, ok: pd.Series, keep: pd.Series) -> None:
    """Warn of the usable rows dropped as repeats of an fname, naming those whose labels
    differ from the row kept (which of them is true, the file does not say)."""
    repeats = ok & ~keep
    if not repeats.any():
        return
    kept = {f: lab for f, lab, k in zip(fnames, labels, keep) if k}
    conflicting = [f for f, lab, r in zip(fnames, labels, repeats) if r and set(lab) != set(kept[f])]
    detail = f"; with other labels than the first: {few(conflicting)}" if conflicting else ""
    log.warning("%s: %d rows repeat an fname and are ignored (the first usable row is kept)%s",
                path, int(repeats.sum()), detail)


def _fnames(df: pd.DataFrame) -> list[str]:
    """The fname column, or the file-name part of clip_id ("{split}/{fname}")."""
    if "fname" in df.columns:
        return df["fname"].tolist()
    return df["clip_id"].str.split("/").str[-1].tolist()


def _scored_rows(df: pd.DataFrame) -> pd.DataFrame:
    """2018: the rows Kaggle scored (usage not "Ignored")."""
    if "usage" in df.columns:
        df = df[df["usage"].str.strip().str.lower() != "ignored"]
    return df


def _single_labels(df: pd.DataFrame) -> tuple[list[tuple[str, ...]], list[bool]]:
    """2018: one label per row; (labels, bad) where bad rows have none or several
    (separated by spaces or commas: 2018 class names have neither)."""
    labels = [s.strip() for s in df["label"]]
    bad = [not lab or " " in lab or "," in lab for lab in labels]
    return [(lab,) for lab in labels], bad


# ----------------------------------------------------------------------------- alignment
def truth_matrix(truth: pd.DataFrame, clip_ids, classes) -> np.ndarray:
    """Multi-hot truth aligned to `clip_ids` (by clip_id, else by file name); `truth` is a
    table of (clip_id, fname, labels) like `Truth.table()` or `Dataset.truth_for`."""
    by_id = dict(zip(truth["clip_id"], truth["labels"])) if truth["clip_id"].notna().all() else {}
    by_name = dict(zip(truth["fname"], truth["labels"]))
    rows = []
    for cid in clip_ids:
        labels = by_id.get(cid)
        if labels is None:
            labels = by_name.get(str(cid).split("/")[-1])
        if labels is None:
            raise TruthError(f"no truth for clip {cid}")
        rows.append(labels)
    return labels_to_matrix(rows, classes)


def truth_frame(truth: pd.DataFrame, classes) -> pd.DataFrame:
    """A truth table as a multi-hot DataFrame: index clip_id, one column per class."""
    ids = list(truth["clip_id"])
    return pd.DataFrame(truth_matrix(truth, ids, classes), index=truth["clip_id"], columns=list(classes))
