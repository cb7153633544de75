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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raytag import storage
from raytag.ensemble.artifact import MANIFEST, experiment_artifact, read_manifest, verify_artifact
from raytag.errors import ArtifactError, StorageError

ENSEMBLE_REPORTS = ("comparison.csv", "comparison.png", "ensemble_summary.json")
# the experiment's own reports, each copied where it exists: raytag.search.report writes the
# leaderboard, search.png and importance.csv; raytag.report_html writes report.html
SWEEP_REPORTS = ("leaderboard.csv", "report.html", "search.png", "importance.csv")


@dataclass
class PullResult:
    artifact: Path
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def pull(experiment: str, storage_uri: str, to: Path) -> PullResult:
    if storage.is_uri(to):  # Path("s3://b/k") is the local folder "s3:/b"
        raise StorageError(f"--to {storage.normalize_uri(to)}: pull copies the artifact to a local folder; "
                           "give a local path (the artifact stays in --storage too)")
    source = storage.join(storage_uri, experiment)
    src_artifact = experiment_artifact(source)  # refuses an artifact folder without its manifest
    if src_artifact is None:
        where = storage.join(source, "ensemble", "artifact") if storage.exists(source) else source
        raise StorageError(
            f"{where}: no ensemble artifact; run `raytag ensemble {experiment} --storage {storage_uri}` first "
            "(or `raytag train` to make a run of that name)"
        )
    to = Path(to).resolve()
    dst_artifact = str(to / "artifact")
    manifest = read_manifest(src_artifact)
    expected = manifest["files"]
    result = PullResult(artifact=Path(dst_artifact))

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

    reports = [*SWEEP_REPORTS, *(f"ensemble/{name}" for name in ENSEMBLE_REPORTS)]
    present = [rel for rel in reports if storage.exists(storage.join(source, rel))]
    stats = storage.copy_tree(source, str(to), files=present)
    result.copied += stats.copied
    result.skipped += stats.skipped
    return result


def _remove_strays(folder: Path, keep: set[str]) -> None:
    """Delete files in a local artifact folder that the source manifest does not list
    (an older artifact's files, ".partial" leftovers), so verification sees only ours."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in keep and rel != MANIFEST:
            path.unlink()
