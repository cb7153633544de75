"""Tag new audio with an ensemble artifact: `raytag predict ARTIFACT INPUT... --out FILE`.

The scoring itself is raytag.ensemble.tagging (`Artifact.predict_files`); this module
finds the input files and writes the output.

A file that cannot be decoded is never scored as silence: it is listed in the failures
report (`<out>.failures.csv` and the printed summary) and left out of the output.

Output follows the artifact's dataset layout: FSDKaggle2019 -> `fname` + one score column
per class; FSDKaggle2018 -> `fname,label` with the top 3 classes separated by spaces.
`--format json` writes the top 3 and every score per file (handy for a few files); an
`--out` ending in .json chooses it too. `--out -` writes either format to stdout.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from raytag import storage
from raytag.data.submission import top3_labels, write_submission_2018, write_submission_2019
from raytag.ensemble.artifact import Artifact, load_artifact
from raytag.ensemble.tagging import compile_models, predict_files
from raytag.errors import RaytagError

# what libsndfile (raytag.data.audio) decodes; folders are searched for these
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64"}
MACOS_METADATA = "__MACOSX"  # the folder of AppleDouble files ("._clip.wav") a macOS zip adds


def _is_audio_in_folder(path: Path, folder: Path) -> bool:
    """An audio file of a searched folder; hidden files and folders are left out, as the
    dataset reader leaves them out: macOS's AppleDouble "._clip.wav" (in __MACOSX/ or beside
    the clip) holds metadata, not audio."""
    parts = path.relative_to(folder).parts
    if any(p.startswith(".") or p == MACOS_METADATA for p in parts):
        return False
    return path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()


def expand_inputs(inputs: Iterable) -> list[Path]:
    """Files as given plus the audio files under each folder (recursive, sorted); a file
    reached twice (given twice, or given and inside a given folder) is tagged once."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_audio_in_folder(p, path))
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


# ----------------------------------------------------------------------------- output formats
STDOUT = "-"  # --out - : the output goes to stdout, as the usual command-line tools take it


def to_stdout(out: Optional[Path], format: str) -> bool:
    """Whether the output goes to stdout: `--out -`, or JSON without --out."""
    return (out is None and format == "json") or (out is not None and str(out) == STDOUT)


def output_format(format: Optional[str], out: Optional[Path]) -> str:
    """--format as given; not given: json for an --out ending in .json, else csv."""
    if format is not None:
        return format
    return "json" if out is not None and Path(out).suffix.lower() == ".json" else "csv"


def output_names(files: Sequence[str]) -> list[str]:
    """`fname` values: the base name, or the path as given where base names collide."""
    base = [Path(f).name for f in files]
    counts = pd.Series(base).value_counts()
    return [b if counts[b] == 1 else f for b, f in zip(base, files)]


def to_json(probs: pd.DataFrame, failures: pd.DataFrame) -> dict:
    tops = top3_labels(list(probs.columns), probs.to_numpy())
    return {
        "files": [
            {"file": f, "top": t, "scores": {c: round(float(v), 6) for c, v in row.items()}}
            for (f, row), t in zip(probs.iterrows(), tops)
        ],
        "failures": failures.to_dict(orient="records"),
    }


def write_output(probs: pd.DataFrame, failures: pd.DataFrame, layout: str, format: str,
                 out: Optional[Path]) -> Optional[Path]:
    """Write the submission (or JSON); returns the path written (None: on stdout)."""
    stdout = to_stdout(out, format)
    if format == "json":
        text = json.dumps(to_json(probs, failures), indent=2)
        if stdout:
            sys.stdout.write(text + "\n")
            return None
        Path(out).parent.mkdir(parents=True, exist_ok=True)  # as the CSV writers do: check_out_path allows a new folder
        Path(out).write_text(text + "\n")
        return Path(out)
    writer = write_submission_2018 if layout == "fsd2018" else write_submission_2019
    return writer(output_names(list(probs.index)), list(probs.columns), probs.to_numpy(),
                  sys.stdout if stdout else Path(out or "submission.csv"))


def check_out_path(out: Optional[Path], format: str) -> None:
    """Refuse an --out that cannot be written (a folder, under a file, read-only folder)
    before any tagging, so no work is lost at the end."""
    if to_stdout(out, format):
        return
    if out is not None and storage.is_uri(out):  # Path("s3://b/k") is the local folder "s3:/b"
        raise RaytagError(f"--out {storage.normalize_uri(out)}: predictions are written to a local file; "
                          "give a local path, then copy it to the bucket (e.g. aws s3 cp)")
    out = Path(out or "submission.csv")
    if out.is_dir():
        raise RaytagError(f"--out {out}: is a folder; give a file name, e.g. --out {out / 'submission.csv'}")
    parent = storage.nearest_existing(out.absolute().parent)
    if not parent.is_dir():
        raise RaytagError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise RaytagError(f"--out {out}: cannot write in {parent} (permission denied)")
    if out.exists() and not os.access(out, os.W_OK):
        raise RaytagError(f"--out {out}: the file exists and cannot be overwritten (permission denied)")


def failures_path(out: Optional[Path], format: str) -> Optional[Path]:
    """Where a CSV output's failures are listed; None for JSON (it carries its failures
    itself) and for a CSV on stdout (they are printed)."""
    if format != "csv" or to_stdout(out, format):
        return None
    out = Path(out or "submission.csv")
    return out.with_name(out.stem + ".failures.csv")


# ----------------------------------------------------------------------------- `raytag predict`
@dataclass
class Tagged:
    """The inputs of one `raytag predict` and what the artifact made of them."""

    artifact: Artifact
    files: list[Path]  # every input file, folders expanded
    probs: pd.DataFrame  # index file, one column per class (the files that could be read)
    failures: pd.DataFrame  # file, reason, retry (the files that could not; retry: another try may succeed)


def tag_inputs(artifact: Path, inputs: list[Path], format: str = "csv", batch_size: int = 32,
               out: Optional[Path] = None, compile: bool = False) -> Tagged:
    """Check the options, verify and load the artifact, and tag every input file
    (a progress bar on stderr while the files are tagged); `compile`: the networks run
    through torch.compile (raytag.ensemble.tagging.CompiledModel)."""
    if format not in ("csv", "json"):
        raise RaytagError(f"--format {format!r}: use csv (Kaggle submission) or json")
    if batch_size < 1:
        raise RaytagError(f"--batch-size {batch_size}: must be at least 1")
    check_out_path(out, format)  # before any work: a bad --out must not lose the tagging
    art = load_artifact(artifact)
    if compile:
        compile_models(art)
    files = expand_inputs(inputs)
    probs, failures = predict_files(art, files, batch_size=batch_size, progress=True)
    return Tagged(artifact=art, files=files, probs=probs, failures=failures)


def save_outputs(tagged: Tagged, out: Optional[Path], format: str) -> tuple[Optional[Path], Optional[Path]]:
    """Write the failures list (CSV output: `<out>.failures.csv`; JSON carries its own),
    then the output, and remove a failures list an earlier run left. Returns (the output
    written, None for JSON on stdout; the failures list written, or None). Raises when no
    input file could be read."""
    listed = failures_path(out, format)
    fail_file = None
    if len(tagged.failures) and listed is not None:
        fail_file = listed
        fail_file.parent.mkdir(parents=True, exist_ok=True)
        tagged.failures.to_csv(fail_file, index=False)
    if tagged.probs.empty:
        raise RaytagError(f"none of the {len(tagged.files)} input file(s) could be read (reasons above)")
    written = write_output(tagged.probs, tagged.failures, tagged.artifact.layout, format, out)
    if listed is not None and fail_file is None:
        listed.unlink(missing_ok=True)  # a list from an earlier run would mislead
    return written, fail_file
