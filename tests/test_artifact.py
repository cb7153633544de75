"""Storage helpers (local paths and file:// URIs), the artifact round trip and its checks,
and `raytag pull` including a resume after an interrupted copy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raytag import __version__, storage
from raytag.ensemble.artifact import load_artifact, verify_artifact
from raytag.ensemble.job import build_ensemble
from raytag.ensemble.pull import pull
from raytag.errors import ArtifactError, StorageError

from test_ensemble import CLASSES, make_experiment


# ----------------------------------------------------------------------------- storage
@pytest.mark.parametrize("as_uri", [False, True])
def test_storage_roundtrip_local_and_file_uri(tmp_path, as_uri):
    base = tmp_path.as_uri() if as_uri else str(tmp_path)
    path = storage.join(base, "a", "b.bin")
    assert not storage.exists(path)
    storage.write_bytes(path, b"hello")
    assert storage.exists(path) and storage.read_bytes(path) == b"hello"
    assert storage.size(path) == 5 and storage.is_dir(storage.join(base, "a"))
    assert storage.sha256_file(path) == storage.sha256_bytes(b"hello")
    df = pd.DataFrame({"clip_id": ["x", "y"], "Bark": [0.1, 0.9]})
    storage.write_parquet(df, storage.join(base, "p.parquet"), metadata={"raytag.classes": '["Bark"]'})
    table = storage.read_parquet_table(storage.join(base, "p.parquet"))
    assert table.schema.metadata[b"raytag.classes"] == b'["Bark"]'
    pd.testing.assert_frame_equal(storage.read_parquet(storage.join(base, "p.parquet")), df)
    storage.write_csv(df, storage.join(base, "t.csv"))
    pd.testing.assert_frame_equal(storage.read_csv(storage.join(base, "t.csv")), df)
    assert storage.list_files(base) == ["a/b.bin", "p.parquet", "t.csv"]
    # no temporary files left behind by the atomic writes
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(StorageError, match="no such file"):
        storage.read_bytes(storage.join(base, "missing"))


@pytest.mark.parametrize("as_uri", [False, True])
def test_compressed_names_are_copied_and_hashed_byte_for_byte(tmp_path, as_uri):
    """pyarrow would (un)compress a .gz or .zst file by its name; storage never does."""
    import gzip

    base = tmp_path.as_uri() if as_uri else str(tmp_path)
    packed = gzip.compress(b'{"traceEvents": []}')
    for name in ("trace.json.gz", "table.csv.zst"):
        src = storage.join(base, "src", name)
        storage.write_bytes(src, packed)
        assert storage.read_bytes(src) == packed
        storage.copy_file(src, storage.join(base, "dst", name))
        assert (tmp_path / "dst" / name).read_bytes() == packed
        assert storage.sha256_file(src) == storage.sha256_bytes(packed)


def test_storage_join_keeps_uri_scheme():
    assert storage.join("s3://bucket/prefix/", "exp", "leaderboard.csv") == "s3://bucket/prefix/exp/leaderboard.csv"
    # options (MinIO's endpoint, a region) stay options: each file keeps its own key
    minio = storage.join("s3://bucket/prefix?endpoint_override=localhost:9000&region=us-east-1", "exp", "a.csv")
    assert minio == "s3://bucket/prefix/exp/a.csv?endpoint_override=localhost:9000&region=us-east-1"
    assert storage.resolve(minio)[1] == "bucket/prefix/exp/a.csv" and storage.basename(minio) == "a.csv"
    assert storage.join("s3://bucket/prefix", "trial#1") == "s3://bucket/prefix/trial%231"  # encoded, not cut off
    assert storage.resolve("~/runs")[1] == str(Path.home() / "runs")
    assert storage.join("results", "exp") == "results/exp"
    with pytest.raises(StorageError, match="unsupported storage scheme"):
        storage.resolve("nosuchscheme://x/y")


def test_copy_tree_resumes_by_size_and_hash(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name, data in {"a.txt": b"aaaa", "sub/b.txt": b"bbbb", "c.txt": b"cc"}.items():
        storage.write_bytes(str(src / name), data)
    first = storage.copy_tree(str(src), str(dst))
    assert sorted(first.copied) == ["a.txt", "c.txt", "sub/b.txt"]
    (dst / "sub" / "b.txt").write_bytes(b"bbXb")  # same size, other content
    (dst / "c.txt").write_bytes(b"c")  # truncated
    second = storage.copy_tree(str(src), str(dst))
    assert sorted(second.copied) == ["c.txt", "sub/b.txt"] and second.skipped == ["a.txt"]
    assert (dst / "sub" / "b.txt").read_bytes() == b"bbbb" and (dst / "c.txt").read_bytes() == b"cc"


# ----------------------------------------------------------------------------- artifact
@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("art"), signals=(0.9, 0.8, 0.0))
    return build_ensemble(exp, top=3)


def test_artifact_round_trip(ensemble):
    path = ensemble.artifact_path
    manifest = json.loads(storage.read_text(storage.join(path, "manifest.json")))
    assert manifest["raytag_version"] == __version__ and manifest["created"]
    files = set(manifest["files"])
    assert "ensemble.json" in files
    for name in ("trial_0", "trial_1", "trial_2"):
        assert {f"members/{name}/member.json", *(f"members/{name}/fold{k}.safetensors" for k in range(3))} <= files
    # weights are copied byte for byte from the trials
    src = storage.read_bytes(str(Path(path).parents[1] / "trial_0" / "outputs" / "weights" / "fold1.safetensors"))
    assert storage.read_bytes(storage.join(path, "members/trial_0/fold1.safetensors")) == src
    art = load_artifact(path)
    assert art.classes == CLASSES and art.combiner == ensemble.chosen
    assert [m.name for m in art.members] == ensemble.members  # best CV first
    assert all(len(m.models) == 3 for m in art.members)
    assert art.members[0].settings["features"]["n_mels"] == 16
    if art.combiner == "weighted":
        assert art.weights == pytest.approx(ensemble.weights)
    # loaded fold models hold the saved tensors
    from safetensors.torch import load_file
    saved = load_file(str(Path(path) / "members" / art.members[0].name / "fold0.safetensors"))
    for key, value in art.members[0].models[0].state_dict().items():
        assert torch.equal(value, saved[key])
    # the combiner reproduces the saved choice on given member outputs
    probs = [np.full((2, len(CLASSES)), 0.5, dtype=np.float32) for _ in art.members]
    assert art.combine(probs).shape == (2, len(CLASSES))


def test_every_combiner_saves_and_loads(ensemble, tmp_path):
    from raytag.ensemble.artifact import MemberSpec, save_artifact
    from raytag.ensemble.combiners import rank_reference

    exp = Path(ensemble.artifact_path).parents[1]
    specs = [MemberSpec(n, str(exp / n / "outputs"), 0.5, rank_reference(np.random.rand(20, len(CLASSES))))
             for n in ("trial_0", "trial_1")]
    for combiner, weights in (("mean", None), ("geometric", None), ("rank", None), ("weighted", [0.25, 0.75])):
        dest = str(tmp_path / combiner)
        save_artifact(dest, specs, combiner, weights, CLASSES, "fat2019")
        art = load_artifact(dest)
        assert art.combiner == combiner
        assert (art.members[0].rank_reference is not None) == (combiner == "rank")
        out = art.combine([np.full((1, len(CLASSES)), 0.2), np.full((1, len(CLASSES)), 0.6)])
        if combiner == "weighted":
            assert np.allclose(out, 0.5)
        if combiner == "mean":
            assert np.allclose(out, 0.4)


@pytest.mark.parametrize("field", ["segment_frames", "crop_frames", "inference"])
def test_a_model_card_without_a_field_is_refused_naming_the_file(ensemble, tmp_path, field):
    """Inference reads model.json only: no fallback to config.yaml for a missing field."""
    import json
    import shutil

    from raytag.ensemble.artifact import MemberSpec, save_artifact
    from raytag.training.outputs import TrialOutputError

    exp = Path(ensemble.artifact_path).parents[1]
    outputs = tmp_path / "trial_0" / "outputs"
    shutil.copytree(exp / "trial_0" / "outputs", outputs)
    card = json.loads((outputs / "model.json").read_text())
    del card[field]
    (outputs / "model.json").write_text(json.dumps(card))
    assert (outputs / "config.yaml").exists()  # the old fallback source is still there
    with pytest.raises(TrialOutputError, match=rf"{outputs / 'model.json'}: {field} missing"):
        save_artifact(str(tmp_path / "art"), [MemberSpec("t0", str(outputs))], "mean", None, CLASSES, "fat2019")


def test_a_save_that_fails_midway_leaves_the_old_artifact_whole(ensemble, tmp_path, monkeypatch):
    """A local rerun writes beside the old artifact and swaps it in: a write that fails
    (a full disk, say) leaves the old one loadable and no half-written folder behind."""
    from raytag.ensemble.artifact import MemberSpec, save_artifact

    exp = Path(ensemble.artifact_path).parents[1]
    specs = [MemberSpec(n, str(exp / n / "outputs")) for n in ("trial_0", "trial_1")]
    dest = tmp_path / "art"
    save_artifact(str(dest), specs, "mean", None, CLASSES, "fat2019")
    real_write, calls = storage.write_bytes, {"n": 0}

    def failing_write(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("No space left on device")
        real_write(path, data)

    monkeypatch.setattr(storage, "write_bytes", failing_write)
    with pytest.raises(OSError, match="No space left"):
        save_artifact(str(dest), specs, "geometric", None, CLASSES, "fat2019")
    monkeypatch.setattr(storage, "write_bytes", real_write)
    assert load_artifact(dest).combiner == "mean"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]
    save_artifact(str(dest), specs, "geometric", None, CLASSES, "fat2019")  # a rerun that works replaces it
    assert load_artifact(dest).combiner == "geometric" and [p.name for p in tmp_path.iterdir()] == ["art"]


def test_a_killed_saves_swap_folders_go_at_the_next_save(ensemble, tmp_path):
    """A save killed mid-swap (SIGKILL, OOM) leaves hidden .art.<tag>.new / .old folders; the
    next save, holding the folder's lock, removes them. Killed between its two renames, the
    old artifact sat in .old alone: it is put back before the new one is swapped in."""
    import shutil

    from raytag.ensemble.artifact import MemberSpec, save_artifact

    exp = Path(ensemble.artifact_path).parents[1]
    specs = [MemberSpec(n, str(exp / n / "outputs")) for n in ("trial_0", "trial_1")]
    dest = tmp_path / "art"
    save_artifact(str(dest), specs, "mean", None, CLASSES, "fat2019")
    shutil.copytree(dest, tmp_path / ".art.0badc0de.new")  # killed before its swap
    dest.rename(tmp_path / ".art.1badc0de.old")  # killed between the renames: no art at all
    save_artifact(str(dest), specs, "geometric", None, CLASSES, "fat2019")
    assert load_artifact(dest).combiner == "geometric" and [p.name for p in tmp_path.iterdir()] == ["art"]

    import os
    import socket

    lock = tmp_path / storage.LOCK_NAME  # a save running now (a live process) holds it
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "command": "raytag ensemble"}))
    with pytest.raises(storage.LockHeld, match=rf"artifact {dest} is in use"):
        save_artifact(str(dest), specs, "mean", None, CLASSES, "fat2019")
    assert load_artifact(dest).combiner == "geometric"


def test_a_local_save_writes_each_file_before_reading_the_next(ensemble, tmp_path, monkeypatch):
    """A local save once read every member's fold files into memory before writing any
    (~550 MB for 10 members x 5 folds); it now streams them into the swap folder one by one."""
    from raytag.ensemble.artifact import MemberSpec, save_artifact

    exp = Path(ensemble.artifact_path).parents[1]
    specs = [MemberSpec(n, str(exp / n / "outputs")) for n in ("trial_0", "trial_1")]
    real_read, real_write, events = storage.read_bytes, storage.write_bytes, []

    def read(path):
        if str(path).endswith(".safetensors"):
            events.append(("read", Path(str(path)).name))
        return real_read(path)

    def write(path, data):
        if str(path).endswith(".safetensors"):
            events.append(("write", Path(str(path)).name))
        real_write(path, data)

    monkeypatch.setattr(storage, "read_bytes", read)
    monkeypatch.setattr(storage, "write_bytes", write)
    save_artifact(str(tmp_path / "art"), specs, "mean", None, CLASSES, "fat2019")
    monkeypatch.undo()
    assert len(events) == 12 and events[:4] == [("read", "fold0.safetensors"), ("write", "fold0.safetensors"),
                                                  ("read", "fold1.safetensors"), ("write", "fold1.safetensors")]
    assert [m.name for m in load_artifact(str(tmp_path / "art")).members] == ["trial_0", "trial_1"]


def test_a_load_checks_the_bytes_it_loads_not_an_earlier_read(ensemble, tmp_path, monkeypatch):
    """load_artifact hashed every file, then read them again to load: a rerun's save swapping
    its artifact in between gave a model of the new files checked against the old manifest.
    Each file is now read once, and those bytes are both checked and loaded."""
    path = _copy_artifact(ensemble.artifact_path, tmp_path / "a")
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    assert load_artifact(path).created == manifest["created"]
    swapped = "members/trial_0/fold0.safetensors"
    other = (Path(path) / "members" / "trial_0" / "fold1.safetensors").read_bytes()  # valid weights, another fold's
    real_read = storage.read_bytes

    def read_after_a_swap(where):
        return other if str(where).endswith(swapped) else real_read(where)

    monkeypatch.setattr(storage, "read_bytes", read_after_a_swap)
    with pytest.raises(ArtifactError, match=f"checksum mismatch for {swapped}"):
        load_artifact(path)


def test_a_manifest_less_ensemble_artifact_is_refused_not_passed_over(ensemble, tmp_path):
    """A `raytag train` run whose ensemble/artifact has no manifest (a failed rerun to a URI)
    does not fall back to its own <run>/artifact: the broken folder is named."""
    from raytag.ensemble.artifact import experiment_artifact

    run = tmp_path / "run"
    storage.copy_tree(ensemble.artifact_path, str(run / "artifact"))
    assert experiment_artifact(str(run)) == str(run / "artifact")
    storage.copy_tree(ensemble.artifact_path, str(run / "ensemble" / "artifact"))
    (run / "ensemble" / "artifact" / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=rf"{run / 'ensemble' / 'artifact'}: artifact folder has no manifest"):
        experiment_artifact(str(run))


def _copy_artifact(src: str, dst: Path) -> str:
    storage.copy_tree(src, str(dst))
    return str(dst)


def test_tampered_file_is_refused(ensemble, tmp_path):
    path = _copy_artifact(ensemble.artifact_path, tmp_path / "a")
    weights = Path(path) / "members" / "trial_1" / "fold2.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch for members/trial_1/fold2.safetensors"):
        load_artifact(path)


def test_extra_missing_and_incomplete_are_refused(ensemble, tmp_path):
    path = _copy_artifact(ensemble.artifact_path, tmp_path / "b")
    (Path(path) / "members" / "trial_0" / "notes.txt").write_text("hi")
    with pytest.raises(ArtifactError, match="members/trial_0/notes.txt is not in the manifest"):
        verify_artifact(path)
    (Path(path) / "members" / "trial_0" / "notes.txt").unlink()
    (Path(path) / "ensemble.json").unlink()
    with pytest.raises(ArtifactError, match="ensemble.json is listed in the manifest but missing"):
        verify_artifact(path)
    (Path(path) / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="no such artifact folder"):
        load_artifact(tmp_path / "nowhere")


def test_weights_are_never_unpickled(ensemble, tmp_path):
    """A pickled state dict in place of a safetensors file is refused before loading."""
    path = _copy_artifact(ensemble.artifact_path, tmp_path / "c")
    target = Path(path) / "members" / "trial_0" / "fold0.safetensors"
    torch.save({"x": torch.zeros(1)}, target)
    manifest_path = Path(path) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["members/trial_0/fold0.safetensors"] = storage.sha256_file(str(target))
    manifest_path.write_text(json.dumps(manifest))  # checksums now "match"
    with pytest.raises(ArtifactError, match="not a readable safetensors state dict"):
        load_artifact(path)


# ----------------------------------------------------------------------------- pull
def test_pull_copies_verifies_and_resumes(ensemble, tmp_path, monkeypatch):
    exp_dir = Path(ensemble.artifact_path).parents[1]
    storage_uri = exp_dir.parent.as_uri()  # file:// URI through pyarrow.fs
    to = tmp_path / "local"
    real_copy = storage.copy_file
    calls = {"n": 0}

    def flaky_copy(src, dst):
        calls["n"] += 1
        if calls["n"] == 4:  # die in the middle of the 4th file: a .partial is left behind
            storage.write_bytes(str(dst) + ".partial", b"half")
            raise OSError("connection reset")
        real_copy(src, dst)

    monkeypatch.setattr(storage, "copy_file", flaky_copy)
    with pytest.raises(OSError, match="connection reset"):
        pull(exp_dir.name, storage_uri, to)
    assert not (to / "artifact" / "manifest.json").exists()  # never looks complete
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        load_artifact(to / "artifact")
    monkeypatch.setattr(storage, "copy_file", real_copy)
    result = pull(exp_dir.name, storage_uri, to)
    assert len(result.skipped) == 3  # the three files copied before the failure
    assert "artifact/manifest.json" in result.copied
    assert (to / "leaderboard.csv").exists() and (to / "ensemble" / "comparison.png").exists()
    assert not list(to.rglob("*.partial"))
    load_artifact(to / "artifact")
    again = pull(exp_dir.name, storage_uri, to)  # a third run copies nothing
    assert again.copied == [] and len(again.skipped) == len(result.copied) + len(result.skipped)


def test_pull_refuses_damaged_source_and_missing_artifact(ensemble, tmp_path):
    exp_dir = Path(ensemble.artifact_path).parents[1]
    copy_root = tmp_path / "store"
    storage.copy_tree(str(exp_dir), str(copy_root / "exp"))
    with pytest.raises(StorageError, match="no ensemble artifact; run `raytag ensemble other"):
        pull("other", str(copy_root), tmp_path / "x")
    with pytest.raises(StorageError, match="--to s3://bucket/x: a URI, but pull copies the artifact to a local folder"):
        pull("exp", str(copy_root), Path("s3://bucket/x"))
    victim = copy_root / "exp" / "ensemble" / "artifact" / "members" / "trial_2" / "member.json"
    victim.write_text(victim.read_text().replace("cnn2d", "cnn2e"))
    with pytest.raises(ArtifactError, match="members/trial_2/member.json: checksum does not match"):
        pull("exp", str(copy_root), tmp_path / "y")


def test_pull_names_an_artifact_folder_without_its_manifest(ensemble, tmp_path):
    """A folder whose writing stopped before the manifest is not 'no ensemble artifact'."""
    exp_dir = Path(ensemble.artifact_path).parents[1]
    store = tmp_path / "store"
    storage.copy_tree(str(exp_dir / "ensemble" / "artifact"), str(store / "exp" / "ensemble" / "artifact"))
    (store / "exp" / "ensemble" / "artifact" / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"artifact folder has no manifest.json \(an interrupted write\?\)"):
        pull("exp", str(store), tmp_path / "got")


def test_pull_brings_the_sweeps_report_files(ensemble, tmp_path):
    """`raytag pull` promises the report: report.html, search.png and importance.csv sit at
    the experiment's top level (raytag.report_html, raytag.search.report)."""
    exp_dir = Path(ensemble.artifact_path).parents[1]
    store = tmp_path / "store"
    storage.copy_tree(str(exp_dir), str(store / "exp"))
    reports = {"report.html": b"<html>report</html>", "search.png": b"\x89PNG\r\n", "importance.csv": b"param,imp\n"}
    for name, data in reports.items():
        (store / "exp" / name).write_bytes(data)
    result = pull("exp", str(store), tmp_path / "got")
    for name, data in reports.items():
        assert (tmp_path / "got" / name).read_bytes() == data and name in result.copied


def test_pull_takes_a_train_runs_artifact(ensemble, tmp_path):
    """`raytag train` saves <run>/artifact; pull finds it where a sweep keeps ensemble/artifact."""
    exp_dir = Path(ensemble.artifact_path).parents[1]
    store = tmp_path / "store"
    storage.copy_tree(str(exp_dir / "ensemble" / "artifact"), str(store / "default" / "artifact"))
    result = pull("default", str(store), tmp_path / "got")
    assert "artifact/manifest.json" in result.copied
    assert load_artifact(tmp_path / "got" / "artifact").classes == load_artifact(ensemble.artifact_path).classes


def test_cli_pull(ensemble, tmp_path):
    from typer.testing import CliRunner

    from raytag.cli import app

    exp_dir = Path(ensemble.artifact_path).parents[1]
    args = ["pull", exp_dir.name, "--storage", exp_dir.parent.as_uri(), "--to", str(tmp_path / "got")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "checksums OK" in result.output
    assert (tmp_path / "got" / "artifact" / "manifest.json").exists()


def test_a_file_given_as_the_artifact_is_named_a_file(tmp_path):
    """`raytag predict clip.wav clip.wav` (the artifact forgotten) said "no such artifact
    folder" of a file that exists."""
    from typer.testing import CliRunner

    from raytag.cli import app

    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF")
    result = CliRunner().invoke(app, ["predict", str(clip), str(clip), "--out", str(tmp_path / "s.csv")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "is a file, not an artifact folder; give the artifact's folder" in result.output


@pytest.mark.parametrize("mine", ["artifact/notes.txt", "artifact/sub/data.txt", "leaderboard.csv"])
def test_pull_refuses_foreign_files_in_to_artifact(ensemble, tmp_path, mine):
    """A folder no pull wrote: a file the pull would delete (in artifact/) or overwrite (a
    report) is the user's; pull refuses before writing anything, and the file survives."""
    from typer.testing import CliRunner

    from raytag.cli import app

    exp_dir = Path(ensemble.artifact_path).parents[1]
    to = tmp_path / "mine"
    (to / mine).parent.mkdir(parents=True)
    (to / mine).write_text("precious")
    args = ["pull", exp_dir.name, "--storage", str(exp_dir.parent), "--to", str(to)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"not from a raytag pull ({mine})" in result.output and "empty or new folder" in result.output
    assert (to / mine).read_text() == "precious"
    assert sorted(p.relative_to(to).as_posix() for p in to.rglob("*") if p.is_file()) == [mine]


def test_pull_resumes_after_an_interruption_into_a_folder_it_wrote(ensemble, tmp_path):
    """An interrupted pull's files (no manifest yet) are the pull's own: pulled.json marks the
    folder, so a pull of another experiment replaces them rather than refusing."""
    exp_dir = Path(ensemble.artifact_path).parents[1]
    store = tmp_path / "store"
    storage.copy_tree(str(exp_dir / "ensemble" / "artifact"), str(store / "default" / "artifact"))
    to = tmp_path / "got"
    (to / "artifact").mkdir(parents=True)
    (to / "artifact" / "half.bin").write_bytes(b"from a pull that stopped")
    (to / "pulled.json").write_text(json.dumps({"experiment": "gone", "storage": str(store)}))
    result = pull("default", str(store), to)
    assert not (to / "artifact" / "half.bin").exists() and result.replaced["experiment"] == "gone"
    load_artifact(to / "artifact")


@pytest.mark.parametrize("own_files", [
    ["outputs/metrics.json", "run_settings.json"],  # a `raytag train` run
    ["comparison.csv", "ensemble_summary.json"],  # a sweep's ensemble/
    ["distill_summary.json", "teacher.parquet"],  # a distill/ folder
])
def test_pull_refuses_a_run_or_ensemble_folder_holding_its_own_artifact(ensemble, tmp_path, own_files):
    """train, ensemble and distill write <folder>/artifact/manifest.json too: without pulled.json,
    only a folder holding nothing but what a pull writes is an (older) pull's; pulling another
    experiment into a run's folder would delete the run's artifact."""
    exp_dir = Path(ensemble.artifact_path).parents[1]
    store = tmp_path / "store"
    storage.copy_tree(str(exp_dir / "ensemble" / "artifact"), str(store / "other" / "artifact"))
    run = tmp_path / "results" / "default"
    (run / "artifact" / "members" / "cnn2d").mkdir(parents=True)
    (run / "artifact" / "members" / "cnn2d" / "fold0.safetensors").write_bytes(b"MY TRAINED MODEL")
    (run / "artifact" / "ensemble.json").write_text('{"mine": 1}')
    (run / "artifact" / "manifest.json").write_text('{"files": {}}')
    for rel in own_files:
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("mine")
    before = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(StorageError, match=r"holds an artifact that is not from a raytag pull \(beside it: "
                                           + own_files[0].split("/")[0]):
        pull("other", str(store), run)
    assert {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_pull_replaces_an_older_pulls_folder_without_pulled_json(ensemble, tmp_path):
    """A raytag before pulled.json left artifact/ and the reports only: still a pull's folder."""
    exp_dir = Path(ensemble.artifact_path).parents[1]
    store = tmp_path / "store"
    storage.copy_tree(str(exp_dir), str(store / "exp"))
    storage.copy_tree(str(exp_dir / "ensemble" / "artifact"), str(store / "default" / "artifact"))
    to = tmp_path / "got"
    pull("exp", str(store), to)
    (to / "pulled.json").unlink()
    (to / ".DS_Store").write_bytes(b"finder")
    result = pull("default", str(store), to)
    assert "leaderboard.csv" in result.removed and not (to / "leaderboard.csv").exists()
    load_artifact(to / "artifact")


def test_pull_of_other_experiment_leaves_no_stale_reports(ensemble, tmp_path):
    """A sweep pulled into a folder, then a train run into the same one: the sweep's leaderboard
    and reports must not stay beside the run's artifact, and pulled.json names the run."""
    from typer.testing import CliRunner

    from raytag.cli import app

    exp_dir = Path(ensemble.artifact_path).parents[1]
    store = tmp_path / "store"
    storage.copy_tree(str(exp_dir), str(store / "exp"))
    (store / "exp" / "report.html").write_text("<html>exp</html>")
    storage.copy_tree(str(exp_dir / "ensemble" / "artifact"), str(store / "default" / "artifact"))
    to = tmp_path / "got"
    first = pull("exp", str(store), to)
    assert "leaderboard.csv" in first.copied and (to / "ensemble" / "comparison.csv").exists()
    assert first.replaced is None and json.loads((to / "pulled.json").read_text())["experiment"] == "exp"
    result = CliRunner().invoke(app, ["pull", "default", "--storage", str(store), "--to", str(to)])
    assert result.exit_code == 0, result.output
    assert f"held exp from {store}, now replaced by default" in result.output
    left = sorted(p.relative_to(to).as_posix() for p in to.rglob("*") if p.is_file())
    assert left == sorted(["pulled.json", *(f"artifact/{f}" for f in json.loads(
        (to / "artifact" / "manifest.json").read_text())["files"]), "artifact/manifest.json"])
    assert json.loads((to / "pulled.json").read_text()) == {
        "experiment": "default", "storage": str(store), "source": str(store / "default")}
    again = pull("default", str(store), to)  # the same experiment again: nothing replaced
    assert again.replaced is None and again.copied == []


def test_pull_to_a_file_is_refused_without_a_traceback(ensemble, tmp_path):
    from typer.testing import CliRunner

    from raytag.cli import app

    exp_dir = Path(ensemble.artifact_path).parents[1]
    (tmp_path / "truth.csv").write_text("fname,labels\n")
    for to, said in [(tmp_path / "truth.csv", "is a file; give a folder"),
                     (tmp_path / "truth.csv" / "sub", f"{tmp_path / 'truth.csv'} is a file, not a folder")]:
        result = CliRunner().invoke(app, ["pull", exp_dir.name, "--storage", str(exp_dir.parent), "--to", str(to)])
        assert result.exit_code == 2 and said in result.output, result.output
        assert "Traceback" not in result.output
    assert (tmp_path / "truth.csv").read_text() == "fname,labels\n"


def test_pull_to_an_empty_path_is_refused_not_the_current_folder(ensemble, tmp_path, monkeypatch):
    """`--to "$DEST"` with DEST unset: Path("") is ".", which would fill the current folder."""
    from typer.testing import CliRunner

    from raytag.cli import app

    exp_dir = Path(ensemble.artifact_path).parents[1]
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = CliRunner().invoke(app, ["pull", exp_dir.name, "--storage", str(exp_dir.parent), "--to", ""])
    assert result.exit_code == 2, result.output
    assert "--to '': empty; give the local folder" in result.output and "Traceback" not in result.output
    assert not any(here.iterdir())


def test_pull_to_a_blank_path_is_refused_before_the_source_is_read(tmp_path, monkeypatch):
    """`--to "  "` passed the empty check and would pull into a folder named by two spaces; it
    is refused first, as an empty one is, even where the experiment does not exist."""
    from typer.testing import CliRunner

    from raytag.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["pull", "nope", "--storage", str(tmp_path), "--to", "  "])
    assert result.exit_code == 2, result.output
    assert "--to '  ': empty; give the local folder to copy the artifact to" in result.output
    assert "no ensemble artifact" not in result.output and not any(tmp_path.iterdir())


@pytest.mark.parametrize("given, landed", [("~/got", "home/got"), ("file://{tmp}/by-uri", "by-uri")])
def test_pull_reads_to_as_the_other_folder_options_do(ensemble, tmp_path, monkeypatch, given, landed):
    """`--to ~/got` pulled into "./~/got" and `--to file:///...` was refused as a URI; "~" is
    expanded and a file:// URI is its local path, as for --feature-cache."""
    exp_dir = Path(ensemble.artifact_path).parents[1]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = pull(exp_dir.name, str(exp_dir.parent), given.format(tmp=tmp_path))
    assert result.artifact == tmp_path / landed / "artifact"
    load_artifact(result.artifact)
    assert not any(here.iterdir())


def test_pull_to_a_read_only_folder_is_refused_before_copying(ensemble, tmp_path, monkeypatch):
    """Root writes anywhere, so the folder is made read-only by answering os.access for it."""
    import os

    from typer.testing import CliRunner

    from raytag.cli import app

    exp_dir = Path(ensemble.artifact_path).parents[1]
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == read_only and mode & os.W_OK
                        else real_access(path, mode, **kw))
    result = CliRunner().invoke(app, ["pull", exp_dir.name, "--storage", str(exp_dir.parent),
                                      "--to", str(read_only / "dest")])
    assert result.exit_code == 2, result.output
    assert f"cannot write in {read_only} (permission denied)" in result.output and "Traceback" not in result.output
    assert not any(read_only.iterdir())
