"""Read a dataset folder in the FSDKaggle2019 or FSDKaggle2018 layout into a `Dataset`.

FSDKaggle2019 (Freesound Audio Tagging 2019):
    train_curated.csv, train_curated/   fname,labels  (labels comma-separated, quoted)
    train_noisy.csv,   train_noisy/     fname,labels
    sample_submission.csv, test/        fname + one column per class: the class order
FSDKaggle2018 (Freesound General-Purpose Audio Tagging):
    train.csv, audio_train/             fname,label (one),manually_verified (1: curated, 0: noisy)
    sample_submission.csv, audio_test/  fname,label: the test clips
Optional, beside them, for reporting only (never to be trained on or tuned against):
    test_labels.csv                     fname,labels  the truth of the test clips
    train_noisy_truth.csv               fname,labels  the true labels of the noisy clips

One bad clip never stops a run: it is left out and listed in `Dataset.skipped` (file,
reason) with a warning on the "raytag.data" logger. Only a folder that cannot be used as
a whole raises `DatasetError`, saying what to fix.
"""
from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Optional

import numpy as np
import pandas as pd

from raytag import storage
from raytag.data.audio import audio_info, load_audio, resampled_length
from raytag.data.audio import min_samples as audio_min_samples
from raytag.data.csvcheck import OverlongRow, read_rows, repeated_fields, unnamed_fields
from raytag.data.labels import labels_to_matrix, parse_label_field
from raytag.data.truth import read_truth
from raytag.errors import AudioDecodeError, DatasetError

log = logging.getLogger("raytag.data")

SPLITS = ("curated", "noisy", "test")
CLIP_COLUMNS = ["clip_id", "fname", "path", "labels", "split", "duration"]
SKIPPED_COLUMNS = ["file", "reason"]
TEST_TRUTH_CSV = "test_labels.csv"
NOISY_TRUTH_CSV = "train_noisy_truth.csv"
LAYOUT_FILES = {"fat2019": "train_curated.csv", "fsd2018": "train.csv"}  # the file that tells a layout
_INFO_THREADS = 8  # header reads are I/O bound (network disks); threads overlap the waits


@dataclass
class Dataset:
    """A dataset folder read and checked; see the module doc for the layouts.

    `clips` has one row per usable clip: clip_id ("{split}/{fname}", the key everywhere),
    fname, path (absolute), labels (tuple; empty for test), split, duration (seconds,
    from the header). `skipped` lists everything left out (file, reason).

    `test_truth` / `noisy_truth` (DataFrame fname, labels) come from test_labels.csv and
    train_noisy_truth.csv when present, else None. They are for reporting only (scoring
    a submission, measuring a noisy-label filter): never train on them or choose
    settings by them.
    """

    root: Path
    layout: str  # "fat2019" | "fsd2018"
    classes: list[str]
    clips: pd.DataFrame
    skipped: pd.DataFrame
    test_truth: Optional[pd.DataFrame] = None
    noisy_truth: Optional[pd.DataFrame] = None
    sample_rate: Optional[int] = None  # rate `audio()` decodes to (None: the file's own)

    def split(self, name: str) -> pd.DataFrame:
        """The clips of one split ("curated" | "noisy" | "test"), index 0..n-1."""
        _check_split(name)
        return self.clips[self.clips["split"] == name].reset_index(drop=True)

    def label_matrix(self, split: Optional[str] = None) -> np.ndarray:
        """Multi-hot float32 (n, n_classes) of the given labels, rows in `clips` order."""
        rows = self.clips if split is None else self.split(split)
        return labels_to_matrix(rows["labels"], self.classes)

    def truth_for(self, split: str) -> Optional[pd.DataFrame]:
        """True labels of a split's clips for reporting: DataFrame(clip_id, fname, labels)
        in the split's clip order, only clips the truth file names; None when there is
        no truth for that split. Curated labels are their own truth."""
        clips = self.split(split)
        if split == "curated":
            return clips[["clip_id", "fname", "labels"]].copy()
        truth = self.test_truth if split == "test" else self.noisy_truth
        if truth is None:
            return None
        merged = clips[["clip_id", "fname"]].merge(truth, on="fname", how="inner")
        return merged.reset_index(drop=True)

    def audio(self, clip_id: str, min_samples: int = 1) -> np.ndarray:
        """Decode one clip (mono float32 at `sample_rate`); AudioDecodeError if unusable."""
        match = self.clips.loc[self.clips["clip_id"] == clip_id, "path"]
        if match.empty:
            raise KeyError(f"no clip {clip_id!r} in this dataset")
        return load_audio(match.iloc[0], self.sample_rate, min_samples=min_samples)

    def write_skipped(self, path: str | Path) -> Path:
        """Write `skipped` as CSV (file, reason); `path` is a file or an existing folder
        (then `<folder>/skipped.csv`). Returns the file written."""
        path = Path(path)
        if path.is_dir():
            path = path / "skipped.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.skipped.to_csv(path, index=False, columns=SKIPPED_COLUMNS)
        return path


def detect_layout(root: str | Path) -> Optional[str]:
    """"fat2019" or "fsd2018" by the file that marks the layout (as load_dataset tells
    them), without reading any clip; a local folder or a URI. None when neither is there."""
    for layout, marker in LAYOUT_FILES.items():
        if storage.exists(storage.join(str(root), marker)):
            return layout
    return None


def load_dataset(
    root: str | Path, sample_rate: Optional[int] = None, min_seconds: float = 0.05,
    features=None,
) -> Dataset:
    """Detect the layout of `root`, read and check every clip, and return a `Dataset`.

    `sample_rate` is only recorded (for `Dataset.audio`); nothing is decoded here, clip
    lengths come from file headers. Clips shorter than `min_seconds` are skipped; given
    `features` (a FeatureConfig), its rule replaces it: one frame (`audio.min_samples`)
    once resampled to the features' rate, counted as the decoder counts, the rule the
    feature store and `raytag predict` apply too.
    """
    frame_rule = None
    if features is not None:
        sample_rate = features.sample_rate if sample_rate is None else sample_rate
        frame_rule = (audio_min_samples(features), int(features.sample_rate))
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DatasetError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; pass the dataset folder")
    reader = _Reader(root, min_seconds, frame_rule)
    if (root / LAYOUT_FILES["fat2019"]).is_file():
        layout, classes = "fat2019", reader.read_fat2019()
    elif (root / LAYOUT_FILES["fsd2018"]).is_file():
        layout, classes = "fsd2018", reader.read_fsd2018()
    else:
        found = sorted(p.name for p in root.iterdir())[:12]
        raise DatasetError(
            f"{root}: no known dataset layout. Expected train_curated.csv, train_noisy.csv, "
            "sample_submission.csv with train_curated/, train_noisy/, test/ (FSDKaggle2019) or "
            "train.csv, sample_submission.csv with audio_train/, audio_test/ (FSDKaggle2018). "
            f"Found: {', '.join(found) if found else 'an empty folder'}"
        )
    clips = reader.finish()
    if layout == "fsd2018":
        # 2018 has no class list: the classes are the labels of usable rows only, so a
        # label seen only on skipped rows (a misspelling, say) is reported, not a class
        kept = {lab for labels in clips["labels"] for lab in labels}
        dropped = sorted(set(classes) - kept)
        if dropped:
            log.warning("%s: label(s) %s appear only on skipped rows of train.csv and are not "
                        "classes (check their spelling)", root, ", ".join(dropped))
        classes = [c for c in classes if c in kept]
    skipped = pd.DataFrame(reader.skipped, columns=SKIPPED_COLUMNS)
    n_curated = int((clips["split"] == "curated").sum())
    if n_curated == 0:
        reasons = "; ".join(f"{f}: {r}" for f, r in reader.skipped[:3])
        raise DatasetError(
            f"{root}: no usable curated clips ({len(skipped)} skipped"
            + (f", e.g. {reasons}" if reasons else "")
            + "). Each reason says what to fix; the curated CSV must list files present in its audio folder."
        )
    counts = clips["split"].value_counts()
    summary = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in SPLITS)
    if len(skipped):
        log.warning("%s: %d clips skipped, kept %s; each is listed with its reason in skipped.csv "
                    "(`raytag prepare` prints its path; a trial writes it to its outputs/)",
                    root, len(skipped), summary)
    else:
        log.info("%s (%s, %d classes): %s", root, layout, len(classes), summary)
    return Dataset(
        root=root,
        layout=layout,
        classes=classes,
        clips=clips,
        skipped=skipped,
        test_truth=_read_truth(root / TEST_TRUTH_CSV, classes),
        noisy_truth=_read_truth(root / NOISY_TRUTH_CSV, classes),
        sample_rate=sample_rate,
    )


# ----------------------------------------------------------------------------- reading
class _Reader:
    """Collects candidate clips and skipped files while the CSVs are read."""

    def __init__(self, root: Path, min_seconds: float, frame_rule: Optional[tuple[int, int]] = None):
        self.root = root
        self.root_real = root.resolve()
        self.min_seconds = float(min_seconds)
        self.frame_rule = frame_rule  # (min samples, at this rate): replaces min_seconds
        self.rows: list[dict] = []  # candidates; headers are checked in finish()
        self.skipped: list[tuple[str, str]] = []
        # fnames of each audio folder whose row was skipped unread (too many fields): listed
        self.unread_rows: dict[str, set[str]] = {}

    # -- layouts ---------------------------------------------------------------
    def read_fat2019(self) -> list[str]:
        curated = self._read_table("train_curated.csv", ["fname", "labels"], "train_curated")
        sub_path = self.root / "sample_submission.csv"
        if sub_path.is_file():
            sub = self._read_table("sample_submission.csv", ["fname"], "test")
            classes = [c for c in sub.columns if c != "fname"]
            if not classes:
                raise DatasetError(f"{sub_path}: no class columns after fname; "
                                   "its columns give the class order")
            unnamed = unnamed_fields(sub_path)
            if unnamed:
                raise DatasetError(f"{sub_path}: header field(s) {', '.join(map(str, unnamed))} have no name (a "
                                   "trailing comma?); each column after fname names a class")
            repeated = repeated_fields(sub_path)  # pandas renames a repeat ("dog.1"): read the header itself
            if repeated or len(set(classes)) != len(classes):
                raise DatasetError(f"{sub_path}: repeated class column(s) {', '.join(repeated)}; "
                                   "each class must have exactly one column")
            vocab_source = "sample_submission.csv columns"
        else:
            classes = sorted({lab for f in curated["labels"] for lab in parse_label_field(f)})
            vocab_source = "labels of train_curated.csv"
            log.warning("%s missing: class order taken from the sorted labels of "
                        "train_curated.csv (%d classes); no test clips", sub_path, len(classes))
            sub = None
        self.vocab, self.vocab_source = set(classes), vocab_source
        self._add_labelled(curated, "curated", "train_curated.csv", "train_curated")
        noisy_path = self.root / "train_noisy.csv"
        if noisy_path.is_file():
            noisy = self._read_table("train_noisy.csv", ["fname", "labels"], "train_noisy")
            self._add_labelled(noisy, "noisy", "train_noisy.csv", "train_noisy")
        else:
            log.warning("%s missing: no noisy clips", noisy_path)
            self._unlisted("train_noisy", set(), "train_noisy.csv")
        self._add_test(sub, "sample_submission.csv", "test")
        return classes

    def read_fsd2018(self) -> list[str]:
        train = self._read_table("train.csv", ["fname", "label", "manually_verified"], "audio_train")
        classes = sorted({lab for f in train["label"] for lab in parse_label_field(f)})
        self.vocab, self.vocab_source = set(classes), "labels of train.csv"
        verified = train["manually_verified"].str.strip()
        usable = self._fsd2018_usable_rows(train, verified)
        train = train.assign(labels=train["label"])
        split_of = verified.map({"1": "curated", "0": "noisy"})
        self._add_labelled(train[usable], split_of[usable], "train.csv", "audio_train",
                           all_fnames=set(train["fname"].str.strip()))
        sub_path = self.root / "sample_submission.csv"
        sub = self._read_table("sample_submission.csv", ["fname"], "audio_test") if sub_path.is_file() else None
        if sub is None:
            log.warning("%s missing: no test clips", sub_path)
        self._add_test(sub, "sample_submission.csv", "audio_test")
        return classes

    def _fsd2018_usable_rows(self, train: pd.DataFrame, verified: pd.Series) -> pd.Series:
        """Mask of the train.csv rows to read on; each other row is skipped with its reason."""
        usable = pd.Series(True, index=train.index)
        for line, row in train.iterrows():
            problem = _fsd2018_row_problem(row, verified.loc[line])
            if problem:
                self._skip(_display("audio_train", row["fname"].strip()),
                           f"train.csv line {_line_no(train, line)}: {problem}")
                usable.loc[line] = False
        return usable

    # -- rows ------------------------------------------------------------------
    def _read_table(self, csv_name: str, required: list[str], folder_name: str) -> pd.DataFrame:
        """One of the layout's CSVs; a row with more fields than the header is skipped with
        why (its fields cannot be told apart), the other rows read as usual."""
        table, overlong = _read_csv(self.root / csv_name, required)
        for row in overlong:
            fname = row.value("fname")
            self._skip(_display(folder_name, fname) if fname else csv_name,
                       f"{csv_name} line {row.line}: {row.problem}")
            self.unread_rows.setdefault(folder_name, set()).add(fname)
        return table

    def _add_labelled(self, table, split, csv_name, folder_name, all_fnames=None):
        folder = self._folder(folder_name, csv_name, len(table))
        # fname -> (line, labels) of the row read for it; only rows that passed every check
        kept: dict[str, tuple[int, tuple]] = {}
        for line, row in table.iterrows():
            fname, line_no = row["fname"].strip(), _line_no(table, line)
            where = f"{csv_name} line {line_no}"
            row_split = split if isinstance(split, str) else split.loc[line]
            file = _display(folder_name, fname)
            labels = parse_label_field(row["labels"])
            if fname in kept:
                self._skip(file, f"{where}: {_duplicate_problem(labels, *kept[fname])}")
                continue
            if not labels:
                self._skip(file, f"{where}: no labels")
                continue
            unknown = [lab for lab in labels if lab not in self.vocab]
            if unknown:
                self._skip(file, f"{where}: label {unknown[0]!r} is not a class "
                                 f"(classes: {self.vocab_source})")
                continue
            if self._add(folder, folder_name, fname, labels, row_split, where):
                kept[fname] = (line_no, labels)
        listed = set(table["fname"].str.strip())
        self._unlisted(folder_name, all_fnames if all_fnames is not None else listed, csv_name)

    def _add_test(self, sub, csv_name, folder_name):
        if sub is None:
            self._unlisted(folder_name, set(), csv_name)
            return
        if len(sub) and not (self.root / folder_name).is_dir():
            # test audio is only predicted, never trained on; the file still gives the class columns
            log.warning("%s: %s lists %d test clips but %s/ is missing: no test clips, no test predictions",
                        self.root, csv_name, len(sub), folder_name)
            return
        folder = self._folder(folder_name, csv_name, len(sub))
        kept: dict[str, int] = {}
        for line, fname in sub["fname"].items():
            fname, line_no = fname.strip(), _line_no(sub, line)
            where = f"{csv_name} line {line_no}"
            if fname in kept:
                self._skip(_display(folder_name, fname),
                           f"{where}: duplicate fname (line {kept[fname]} is kept)")
                continue
            if self._add(folder, folder_name, fname, (), "test", where):
                kept[fname] = line_no
        self._unlisted(folder_name, set(sub["fname"].str.strip()), csv_name)

    def _folder(self, folder_name, csv_name, n_rows) -> Optional[Path]:
        folder = self.root / folder_name
        if not folder.is_dir():
            if n_rows:
                raise DatasetError(
                    f"{self.root}: {csv_name} lists {n_rows} clips but the audio folder "
                    f"{folder_name}/ is missing; put the audio files there (or move {csv_name} away)"
                )
            return None
        return folder

    def _add(self, folder, folder_name, fname, labels, split, where) -> bool:
        """Add one candidate clip; False (and skipped, with why) when its fname is unusable."""
        file = _display(folder_name, fname)
        path, reason = self._safe_path(folder, fname)
        if reason:
            self._skip(file, f"{where}: {reason}")
            return False
        self.rows.append(dict(clip_id=f"{split}/{fname}", fname=fname, path=str(path),
                              labels=tuple(labels), split=split, file=file))
        return True

    def _safe_path(self, folder: Path, fname: str) -> tuple[Optional[Path], Optional[str]]:
        """The file's path, or why the fname cannot be used. A fname must stay inside the
        dataset folder; a symlinked audio folder (data on another disk) is allowed, a link
        inside it that leads elsewhere is not."""
        if not fname:
            return None, "empty fname"
        pure = PurePath(fname)
        if pure.is_absolute():
            return None, f"absolute path {fname!r} not allowed (fnames are relative to {folder.name}/)"
        if ".." in pure.parts:
            return None, f"{fname!r} escapes the data folder (..)"
        path = folder / fname
        real = path.resolve()
        if not (real.is_relative_to(self.root_real) or real.is_relative_to(folder.resolve())):
            return None, f"{fname!r} is a link that resolves outside the data folder (to {real})"
        if not path.exists():
            return None, "file not found"
        if not path.is_file():
            return None, "not a regular file"
        return path, None

    def _unlisted(self, folder_name, listed: set, csv_name):
        folder = self.root / folder_name
        if not folder.is_dir():
            return
        listed = listed | self.unread_rows.get(folder_name, set())  # reported with their row
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or entry.is_dir() or entry.name in listed:
                continue
            self._skip(f"{folder_name}/{entry.name}", f"not listed in {csv_name}")

    def _skip(self, file: str, reason: str):
        log.warning("skipped %s: %s", file, reason)
        self.skipped.append((file, reason))

    # -- headers ---------------------------------------------------------------
    def finish(self) -> pd.DataFrame:
        """Read every candidate's header (threaded), drop the unusable ones."""
        with ThreadPoolExecutor(max_workers=_INFO_THREADS) as pool:
            infos = list(pool.map(_try_info, [r["path"] for r in self.rows]))
        kept = []
        for row, (duration, rate, error) in zip(self.rows, infos):
            short = None if error is not None or duration <= 0 else self._too_short(duration, rate)
            if error is not None:
                self._skip(row["file"], error)
            elif duration <= 0:
                self._skip(row["file"], "empty audio file (0 samples)")
            elif short:
                self._skip(row["file"], short)
            else:
                kept.append({**row, "duration": duration})
        clips = pd.DataFrame(kept, columns=CLIP_COLUMNS + ["file"])[CLIP_COLUMNS]
        clips["duration"] = clips["duration"].astype(float)
        return clips.reset_index(drop=True)


    def _too_short(self, duration: float, rate: int) -> Optional[str]:
        """Why a clip of this header is too short to use, or None."""
        if self.frame_rule is None:
            if duration >= self.min_seconds:
                return None
            return f"too short: {duration:.3f} s, need at least {self.min_seconds:g} s (one frame)"
        need, rate_out = self.frame_rule
        samples = resampled_length(round(duration * rate), rate, rate_out)  # as load_audio will have it
        if samples >= need:
            return None
        return f"too short: {samples} samples at {rate_out} Hz, need at least {need} (one frame)"


def _try_info(path: str):
    """(duration s, sample rate, None) from the header, or (0.0, 0, why it is unusable)."""
    try:
        duration, rate, _ = audio_info(path)
        return duration, rate, None
    except AudioDecodeError as err:
        return 0.0, 0, err.reason


# ----------------------------------------------------------------------------- helpers
def _read_csv(path: Path, required: list[str]) -> tuple[pd.DataFrame, list[OverlongRow]]:
    """A layout CSV as text columns, and its rows with more fields than the header, which
    are left out of the table (pandas would shift every row by a column for them). Row
    names on every row (R's write.table) are pandas' index, dropped below."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err}); save the file as UTF-8") from err
    except OSError as err:
        raise DatasetError(f"{path}: not a readable CSV file ({err}); fix or replace it") from err
    rows = read_rows(text, path)
    try:
        table = pd.read_csv(io.StringIO(rows.text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DatasetError(f"{path}: not a readable CSV file ({err}); fix or replace it") from err
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(table.columns) or 'none'}. "
            f"The file must have a header line with {', '.join(required)}"
        )
    table = table.reset_index(drop=True)
    # the line each row starts on (row + 2 is wrong after a quoted field spanning lines),
    # unless csv's reading and pandas' disagree on the rows
    table.attrs["lines"] = rows.lines if rows.lines is not None and len(rows.lines) == len(table) else None
    return table, rows.overlong


def _line_no(table: pd.DataFrame, row) -> int:
    """The line of the CSV file `table` was read from where row `row` (its index) starts."""
    lines = table.attrs.get("lines")
    return lines[int(row)] if lines else int(row) + 2


def _read_truth(path: Path, classes: list[str]) -> Optional[pd.DataFrame]:
    """An optional truth file -> DataFrame(fname, labels tuple), or None; bad rows are
    dropped with a warning (raytag.data.truth, lenient: reporting only)."""
    truth = read_truth(path, strict=False, classes=classes)
    return None if truth is None else truth.table()[["fname", "labels"]]


def _fsd2018_row_problem(row, verified: str) -> Optional[str]:
    """Why a train.csv row of the 2018 layout cannot be used, or None."""
    if verified not in ("0", "1"):
        return f"manually_verified must be 0 or 1, got {row['manually_verified']!r}"
    labels = parse_label_field(row["label"])
    # MAP@3 scores one label per clip; a row with none is reported by the common row checks
    if len(labels) > 1:
        return (f"FSDKaggle2018 clips have exactly one label; "
                f"this row has {len(labels)} ({','.join(labels)})")
    return None


def _duplicate_problem(labels: tuple, kept_line: int, kept_labels: tuple) -> str:
    """Why a repeated fname's row is skipped; rows that disagree on the labels say so, since
    which of them is right only the user can tell."""
    problem = f"duplicate fname (line {kept_line} is kept)"
    if set(labels) == set(kept_labels):
        return problem
    return (f"{problem} with other labels: {','.join(labels) or 'none'} here, {','.join(kept_labels)} "
            "there; correct the row that is wrong")


def _display(folder_name: str, fname: str) -> str:
    return fname if PurePath(fname).is_absolute() else f"{folder_name}/{fname}"


def _check_split(name):
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
