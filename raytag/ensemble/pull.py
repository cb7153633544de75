"""`raytag pull EXPERIMENT --storage URI --to DIR`: copy a sweep's best ensemble artifact (or
a `raytag train` run's artifact), its leaderboard and its reports from the storage (s3://,
gs://, file:// or a local folder, all through pyarrow.fs) to a local folder, and verify the
checksums.

Resumable: a file already in DIR with the manifest's size and SHA-256 is not copied again,
and each file is copied under a ".partial" name and renamed when complete, so re-running
after an interruption finishes the job. The artifact's manifest is copied last, so DIR
never holds a manifest whose files are not all there and verified.

    DIR/artifact/            the artifact (for `raytag predict DIR/artifact ...`)
    DIR/leaderboard.csv      the sweep's leaderboard
    DIR/report.html, search.png, importance.csv   the sweep's report, where it has them
    DIR/ensemble/            comparison.csv, comparison.png, ensemble_summary.json
    DIR/pulled.json          what DIR holds: {"experiment", "storage", "source"}

DIR is a new or empty folder, or one an earlier pull wrote (it holds pulled.json, or, from a
raytag before pulled.json, an artifact with its manifest and only the files a pull writes: a
train run's, a sweep's ensemble/ or a distill/ folder, which hold other files beside their
artifact, is not one and is refused). Into such a folder a pull of another experiment replaces the
artifact and the reports, and deletes the reports the new source lacks, so DIR never
describes two experiments. Anywhere else, a file pull would delete or overwrite (a file in
DIR/artifact that is not the artifact's, a leaderboard.csv) makes it refuse, before it writes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from raytag import storage
from raytag.ensemble.artifact import MANIFEST, experiment_artifact, read_manifest, verify_artifact
from raytag.errors import ArtifactError, StorageError

ENSEMBLE_REPORTS = ("comparison.csv", "comparison.png", "ensemble_summary.json")
# the experiment's own reports, each copied where it exists: raytag.search.report writes the
# leaderboard, search.png and importance.csv; raytag.report_html writes report.html
SWEEP_REPORTS = ("leaderboard.csv", "report.html", "search.png", "importance.csv")
REPORTS = (*SWEEP_REPORTS, *(f"ensemble/{name}" for name in ENSEMBLE_REPORTS))
PULLED = "pulled.json"  # written by pull into --to: which experiment the folder holds


@dataclass
class PullResult:
    artifact: Path
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # the previous pull's reports the source lacks
    replaced: Optional[dict] = None  # the previous pull's record, when it was of another experiment


def pull(experiment: str, storage_uri: str, to: str | Path) -> PullResult:
    to = _to_folder(to)  # before the source is read: a wrong --to costs no listing
    source = storage.join(storage_uri, experiment)
    src_artifact = experiment_artifact(source)  # refuses an artifact folder without its manifest
    if src_artifact is None:
        where = storage.join(source, "ensemble", "artifact") if storage.exists(source) else source
        raise StorageError(
            f"{where}: no ensemble artifact; run `raytag ensemble {experiment} --storage {storage_uri}` first "
            "(or `raytag train` to make a run of that name)"
        )
    _check_to_folder(to)
    dst_artifact = str(to / "artifact")
    manifest = read_manifest(src_artifact)
    expected = manifest["files"]
    result = PullResult(artifact=Path(dst_artifact))
    present = [rel for rel in REPORTS if storage.exists(storage.join(source, rel))]
    record = {"experiment": experiment, "storage": storage.absolute(storage_uri), "source": storage.absolute(source)}
    ours, result.replaced = _claim_folder(to, record, set(expected), present)

    # a manifest left from an older artifact must not vouch for a half-new folder
    old_manifest = Path(dst_artifact) / MANIFEST
    if old_manifest.exists() and storage.sha256_file(str(old_manifest)) != storage.sha256_file(
            storage.join(src_artifact, MANIFEST)):
        old_manifest.unlink()
    _remove_strays(Path(dst_artifact), set(expected))
    stats = storage.copy_tree(src_artifact, dst_artifact, files=sorted(expected), expected_sha=expected)
    result.copied += [f"artifact/{f}" for f in stats.copied]
    result.skipped += [f"artifact/{f}" for f in stats.skipped]
    # every copied file is checked against the manifest before the manifest lands
    for rel in stats.copied:
        if storage.sha256_file(storage.join(dst_artifact, rel)) != expected[rel]:
            raise ArtifactError(
                f"{src_artifact}/{rel}: checksum does not match the manifest after copying; "
                "the source artifact is damaged, run `raytag ensemble` again"
            )
    stats = storage.copy_tree(src_artifact, dst_artifact, files=[MANIFEST])
    result.copied += [f"artifact/{f}" for f in stats.copied]
    result.skipped += [f"artifact/{f}" for f in stats.skipped]
    verify_artifact(dst_artifact)

    if ours:  # the folder mirrors the source: no report of an earlier pull is left beside this one
        result.removed = _remove_stale_reports(to, keep=set(present))
    stats = storage.copy_tree(source, str(to), files=present)
    result.copied += stats.copied
    result.skipped += stats.skipped
    return result


def _to_folder(to: str | Path) -> Path:
    """--to as an absolute local folder, as the other folder options read it: "~" expanded, a
    file:// URI its path. Refused: an empty or blank one (an unset shell variable; Path("")
    would be the current folder) and another file system's URI (Path("s3://b/k") is the
    local folder "s3:/b/k")."""
    return storage.local_folder_option(
        to, "--to", "give the local folder to copy the artifact to",
        "pull copies the artifact to a local folder; give a local path (the artifact stays in --storage too)",
        StorageError).resolve()


def _check_to_folder(to: Path) -> None:
    """Refuse a --to that is a file, lies under one, or cannot be written (as the nearest
    folder that exists says), before anything is copied or written."""
    if to.exists() and not to.is_dir():
        raise StorageError(f"--to {to}: is a file; give a folder (pull writes the artifact and the reports in it)")
    folder = storage.nearest_existing(to)
    if not folder.is_dir():
        raise StorageError(f"--to {to}: {folder} is a file, not a folder; give a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"--to {to}: cannot write in {folder} (permission denied); give a folder you can write")


def _claim_folder(to: Path, record: dict, listed: set[str], reports: list[str]) -> tuple[bool, Optional[dict]]:
    """Make `to` this pull's folder: refuse (before writing anything) one no pull wrote that
    holds files the pull would delete or overwrite, then record the pull in pulled.json.
    Returns whether an earlier pull wrote the folder, and that pull's record where it was of
    another experiment (its reports are then replaced or removed)."""
    previous = _previous_pull(to)
    ours = previous is not None or _older_pulls_folder(to)
    if not ours:
        _refuse_foreign_files(to, listed, reports)
    replaced = previous if previous is not None and _other_experiment(previous, record) else None
    storage.write_text(str(to / PULLED), json.dumps(record, indent=1) + "\n")
    return ours, replaced


def _previous_pull(to: Path) -> Optional[dict]:
    """The record an earlier pull left in `to` (pulled.json), or None. A record that cannot be
    read still marks the folder as a pull's: only raytag writes that name there."""
    path = to / PULLED
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _older_pulls_folder(to: Path) -> bool:
    """Whether `to`, which has no pulled.json, is the output of a pull by a raytag before
    pulled.json: an artifact with its manifest and nothing beside it that a pull does not
    write. A train run, a sweep's ensemble/ or a distill/ folder also holds artifact/manifest.json,
    but always beside files of its own (outputs/, run_settings.json, comparison.csv,
    distill_summary.json...): refused, naming them, since the pull would replace their artifact."""
    if not (to / "artifact" / MANIFEST).is_file():
        return False
    others = _not_a_pulls_files(to)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise StorageError(f"--to {to}: holds an artifact that is not from a raytag pull (beside it: {shown}; "
                           "a train run's, sweep's, ensemble's or distill folder?), which the pull would delete "
                           "or overwrite; give an empty or new folder")
    return True


def _not_a_pulls_files(to: Path) -> list[str]:
    """The entries of `to` (and of its ensemble/) that no pull writes: a pull writes artifact/,
    the reports and pulled.json, and leaves ".partial" files when interrupted; hidden files
    (.DS_Store) are nobody's."""
    ours = {"artifact", PULLED, "ensemble", *SWEEP_REPORTS}
    others = [_entry_name(path, to) for path in sorted(to.iterdir()) if not _pulls_entry(path, ours)]
    reports_dir = to / "ensemble"
    if reports_dir.is_dir():
        others += [_entry_name(path, to) for path in sorted(reports_dir.iterdir())
                   if not _pulls_entry(path, set(ENSEMBLE_REPORTS))]
    return others


def _pulls_entry(path: Path, names: set[str]) -> bool:
    name = path.name
    if name.startswith(".") or name.endswith(storage.PARTIAL_SUFFIX):
        return True
    return name in names and (path.is_dir() if name in ("artifact", "ensemble") else path.is_file())


def _entry_name(path: Path, to: Path) -> str:
    rel = path.relative_to(to).as_posix()
    return f"{rel}/" if path.is_dir() else rel


def _other_experiment(previous: dict, record: dict) -> bool:
    return (previous.get("experiment"), previous.get("storage")) != (record["experiment"], record["storage"])


def _refuse_foreign_files(to: Path, listed: set[str], reports: list[str]) -> None:
    """StorageError naming the files a pull would delete or overwrite in a folder that no pull
    wrote: files in `to`/artifact that are not the artifact's (an interrupted pull's ".partial"
    files and the manifest's own files aside), and the reports the source has that are there."""
    artifact = to / "artifact"
    if artifact.exists() and not artifact.is_dir():
        raise StorageError(f"--to {to}: {artifact} is a file, not an artifact folder; give an empty or new folder")
    foreign = [f"artifact/{rel}" for rel in _local_files(artifact)
               if rel not in listed and not rel.endswith(storage.PARTIAL_SUFFIX) and not _hidden(rel)]
    foreign += [rel for rel in reports if (to / rel).exists()]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise StorageError(f"--to {to}: holds files that are not from a raytag pull ({shown}), which the pull "
                           "would delete or overwrite; give an empty or new folder, or move them out")


def _remove_strays(folder: Path, keep: set[str]) -> None:
    """Delete files in a local artifact folder that the source manifest does not list
    (an older artifact's files, ".partial" leftovers), so verification sees only ours.
    Hidden files (.DS_Store) are left: verification ignores them, and they are not raytag's."""
    for rel in _local_files(folder):
        if rel not in keep and rel != MANIFEST and not _hidden(rel):
            (folder / rel).unlink()


def _remove_stale_reports(to: Path, keep: set[str]) -> list[str]:
    """Delete the reports in `to` that the source does not have (an earlier pull's, of
    another experiment or an older state of this one); returns them."""
    stale = [rel for rel in REPORTS if rel not in keep and (to / rel).is_file()]
    for rel in stale:
        (to / rel).unlink()
    reports_dir = to / "ensemble"
    if reports_dir.is_dir() and not any(reports_dir.iterdir()):
        reports_dir.rmdir()
    return stale


def _local_files(folder: Path) -> list[str]:
    """Relative paths of the files under a local folder (none when it is absent)."""
    if not folder.is_dir():
        return []
    return [path.relative_to(folder).as_posix() for path in sorted(folder.rglob("*")) if path.is_file()]


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))
