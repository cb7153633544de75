"""Tag new audio with an ensemble artifact: `raytag predict ARTIFACT INPUT... --out FILE`.

Each file is decoded once per sample rate the members need, turned into each member's
features by its own front end, cut into segments (segment averaging, as in training's
validation), scored by every fold model of every member (fold models averaged within a
member), and the members are combined with the artifact's combiner.

A file that cannot be decoded is never scored as silence: it is listed in the failures
report (`<out>.failures.csv` and the printed summary) and left out of the output.

Output follows the artifact's dataset layout: FSDKaggle2019 -> `fname` + one score column
per class; FSDKaggle2018 -> `fname,label` with the top 3 classes separated by spaces.
`--format json` writes the top 3 and every score per file (handy for a few files).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from raytag.errors import AudioDecodeError, RaytagError

# what libsndfile (raytag.data.audio) decodes; folders are searched for these
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".w64"}
FILES_PER_CHUNK = 16  # files decoded and featurised together (bounds memory for long lists)
TOP_K = 3  # labels per clip in the 2018 submission (MAP@3)


def expand_inputs(inputs: Iterable) -> list[Path]:
    """Files as given plus the audio files under each folder (recursive, sorted); a file
    reached twice (given twice, or given and inside a given folder) is tagged once."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise RaytagError(f"{path}: folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise RaytagError(f"{path}: no such file or folder")
    if not out:
        raise RaytagError("no input files given")
    seen: set[Path] = set()
    unique = []
    for path in out:
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


class _MemberRunner:
    """One member's front end and fold models, applied to decoded waveforms."""

    def __init__(self, member, batch_size: int, device: str):
        from raytag.features.frontends import build_frontend

        self.member = member
        self.cfg = member.feature_config
        self.frontend = build_frontend(self.cfg).to(device).eval()
        s = member.settings
        self.segment_frames = int(s["segment_frames"])
        self.inference = s.get("inference", {})
        self.mean = None if s.get("norm_mean") is None else np.asarray(s["norm_mean"], dtype=np.float32)
        self.std = None if s.get("norm_std") is None else np.asarray(s["norm_std"], dtype=np.float32)
        self.batch_size = batch_size
        self.device = device

    @torch.no_grad()
    def features(self, wave: np.ndarray) -> np.ndarray:
        # one clip at a time: top_db and lengths are per clip, as in the feature store
        x = torch.from_numpy(wave)[None].to(self.device)
        return self.frontend(x)[0].float().cpu().numpy()

    def predict(self, feats: Sequence[np.ndarray]) -> np.ndarray:
        from raytag.training.inference import predict_segments

        per_fold = [
            predict_segments(
                model, feats, self.segment_frames,
                overlap=self.inference.get("overlap", 0.5),
                reduce=self.inference.get("reduce", "mean"),
                tta=self.inference.get("tta", 0),
                batch_size=self.batch_size, device=self.device, mean=self.mean, std=self.std,
            )
            for model in self.member.models
        ]
        return np.mean(per_fold, axis=0)  # fold models averaged within the member


def _featurise(path: str, runners: list, rates: set) -> list[np.ndarray]:
    """Each member's features of one file; AudioDecodeError when any step cannot use it.
    Decoding and front ends follow the feature store (raytag.features.store), so a clip
    usable in training is usable here and the other way round."""
    from raytag.data.audio import load_audio, min_samples

    # the feature store's rule (one frame), per rate: the longest frame of the members at it
    need = {rate: max(min_samples(r.cfg) for r in runners if r.cfg.sample_rate == rate) for rate in rates}
    waves = {rate: load_audio(path, rate, min_samples=need[rate]) for rate in rates}
    feats = []
    for r in runners:
        try:
            x = r.features(waves[r.cfg.sample_rate])
        except RuntimeError as err:
            raise AudioDecodeError(path, f"front end failed: {str(err).splitlines()[0]}") from err
        if not np.isfinite(x).all():
            raise AudioDecodeError(path, "features are not finite (NaN/inf)")
        feats.append(x)
    return feats


def predict_files(artifact, paths: Sequence, batch_size: int = 32, progress: bool = False,
                  device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(probs, failures): probs is indexed by file (str) with one column per class, in the
    order of `paths` minus the failures; failures has columns file, reason."""
    runners = [_MemberRunner(m, batch_size, device) for m in artifact.members]
    rates = {r.cfg.sample_rate for r in runners}  # each file is decoded once per rate
    names, rows, failures = [], [], []
    paths = [str(p) for p in paths]
    bar = _progress(progress)
    with bar:
        task = bar.add_task("tagging", total=len(paths))
        for start in range(0, len(paths), FILES_PER_CHUNK):
            chunk = paths[start:start + FILES_PER_CHUNK]
            ok, feats = [], [[] for _ in runners]
            for path in chunk:
                try:
                    per_member = _featurise(path, runners, rates)
                except AudioDecodeError as err:
                    failures.append({"file": path, "reason": err.reason})
                    continue
                ok.append(path)
                for i, x in enumerate(per_member):
                    feats[i].append(x)
            if ok:
                rows.append(artifact.combine([r.predict(f) for r, f in zip(runners, feats)]))
                names.extend(ok)
            bar.update(task, advance=len(chunk))
    probs = np.concatenate(rows) if rows else np.zeros((0, len(artifact.classes)), dtype=np.float32)
    probs_df = pd.DataFrame(probs, index=pd.Index(names, name="file"), columns=list(artifact.classes))
    return probs_df, pd.DataFrame(failures, columns=["file", "reason"])


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)


class _NoBar:
    """Stands in for rich's Progress when no bar is wanted."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return None

    def update(self, *a, **k):
        pass


# ----------------------------------------------------------------------------- output formats
def output_names(files: Sequence[str]) -> list[str]:
    """`fname` values: the base name, or the path as given where base names collide."""
    base = [Path(f).name for f in files]
    counts = pd.Series(base).value_counts()
    return [b if counts[b] == 1 else f for b, f in zip(base, files)]


def submission_2019(probs: pd.DataFrame) -> pd.DataFrame:
    out = probs.reset_index(drop=True)
    out.insert(0, "fname", output_names(list(probs.index)))
    return out


def top_labels(probs: pd.DataFrame, k: int = TOP_K) -> list[list[str]]:
    classes = np.asarray(probs.columns)
    order = np.argsort(-probs.to_numpy(), axis=1, kind="stable")[:, :k]
    return [classes[row].tolist() for row in order]


def submission_2018(probs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "fname": output_names(list(probs.index)),
        "label": [" ".join(t) for t in top_labels(probs)],
    })


def to_json(probs: pd.DataFrame, failures: pd.DataFrame) -> dict:
    tops = top_labels(probs)
    return {
        "files": [
            {"file": f, "top": t, "scores": {c: round(float(v), 6) for c, v in row.items()}}
            for (f, row), t in zip(probs.iterrows(), tops)
        ],
        "failures": failures.to_dict(orient="records"),
    }


def write_output(probs: pd.DataFrame, failures: pd.DataFrame, layout: str, format: str,
                 out: Optional[Path]) -> Optional[Path]:
    """Write the submission (or JSON); returns the path written (None: JSON on stdout)."""
    if format == "json":
        text = json.dumps(to_json(probs, failures), indent=2)
        if out is None:
            sys.stdout.write(text + "\n")
            return None
        Path(out).write_text(text + "\n")
        return Path(out)
    table = submission_2018(probs) if layout == "fsd2018" else submission_2019(probs)
    out = Path(out or "submission.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


def check_out_path(out: Optional[Path], format: str) -> None:
    """Refuse an --out that cannot be written (a folder, under a file, read-only folder)
    before any tagging, so no work is lost at the end."""
    if out is None and format == "json":
        return  # stdout
    out = Path(out or "submission.csv")
    if out.is_dir():
        raise RaytagError(f"--out {out}: is a folder; give a file name, e.g. --out {out / 'submission.csv'}")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise RaytagError(f"--out {out}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise RaytagError(f"--out {out}: cannot write in {parent} (permission denied)")
            break
    if out.exists() and not os.access(out, os.W_OK):
        raise RaytagError(f"--out {out}: the file exists and cannot be overwritten (permission denied)")


def failures_path(out: Optional[Path]) -> Path:
    out = Path(out or "submission.csv")
    return out.with_name(out.stem + ".failures.csv")


# ----------------------------------------------------------------------------- command
def predict_command(artifact: Path, inputs: list[Path], out: Optional[Path] = None,
                    format: str = "csv", batch_size: int = 32) -> dict:
    from rich.console import Console

    from raytag.ensemble.artifact import load_artifact

    if format not in ("csv", "json"):
        raise RaytagError(f"--format {format!r}: use csv (Kaggle submission) or json")
    if batch_size < 1:
        raise RaytagError(f"--batch-size {batch_size}: must be at least 1")
    console = Console(stderr=True)
    check_out_path(out, format)
    art = load_artifact(artifact)
    files = expand_inputs(inputs)
    probs, failures = predict_files(art, files, batch_size=batch_size, progress=True)
    fail_file = None
    if len(failures):
        where_listed = "in the JSON's failures"
        if format == "csv":  # JSON output carries its failures itself
            fail_file = failures_path(out)
            fail_file.parent.mkdir(parents=True, exist_ok=True)
            failures.to_csv(fail_file, index=False)
            where_listed = str(fail_file)
        console.print(f"[yellow]{len(failures)} of {len(files)} file(s) could not be read and are "
                      f"not in the output[/] (listed {where_listed}):")
        for rec in failures.head(10).itertuples():
            console.print(f"  {rec.file}: {rec.reason}")
        if len(failures) > 10:
            console.print(f"  ... and {len(failures) - 10} more")
    if probs.empty:
        raise RaytagError(f"none of the {len(files)} input file(s) could be read (reasons above)")
    written = write_output(probs, failures, art.layout, format, out)
    if format == "csv" and fail_file is None:
        failures_path(out).unlink(missing_ok=True)  # a list from an earlier run would mislead
    where = written if written is not None else "stdout"
    console.print(f"tagged {len(probs)} file(s) with {len(art.members)} member(s) "
                  f"({art.combiner}); wrote [bold]{where}[/]")
    return {"written": written, "tagged": len(probs), "failed": len(failures), "failures_file": fail_file}
