"""Names other people write (a pulled manifest, member.json, object-store keys) never pick
where raytag writes or reads: absolute names, ".." and links out of the folder are refused,
naming the entry, before anything is written."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raytag import storage
from raytag.ensemble.artifact import MANIFEST, load_artifact
from raytag.ensemble.job import build_ensemble
from raytag.ensemble.pull import pull
from raytag.errors import ArtifactError, DatasetError, StorageError

from test_ensemble import make_experiment


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "..\\x", "", "."])
def test_safe_relpath_refuses_names_that_leave_the_folder(name):
    with pytest.raises(StorageError, match="refused entry"):
        storage.safe_relpath(name, where="manifest.json")


def test_safe_join_refuses_a_link_out_of_the_folder(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(StorageError, match="refused entry 'out/x'.*outside"):
        storage.safe_join(tmp_path / "root", "out/x")
    assert storage.safe_join(str(tmp_path / "root"), "a/./b") == str(tmp_path / "root" / "a" / "b")


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("untrusted"), signals=(0.9, 0.8))
    return build_ensemble(exp, top=2)


def _store_copy(ensemble, root: Path) -> Path:
    """A copy of the experiment under root/store/exp; returns its artifact folder."""
    exp_dir = Path(ensemble.artifact_path).parents[1]
    shutil.copytree(exp_dir, root / "store" / "exp")
    return root / "store" / "exp" / "ensemble" / "artifact"


def _add_to_manifest(artifact: Path, rel: str, data: bytes) -> None:
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"][rel] = storage.sha256_bytes(data)
    (artifact / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_pull_refuses_manifest_entries_outside_to(ensemble, tmp_path, kind):
    artifact = _store_copy(ensemble, tmp_path)
    payload = b"written by someone else"
    to = tmp_path / "a" / "b" / "to"
    if kind == "dotdot":
        rel = "../../../evil.txt"  # to/artifact/../../../evil.txt is tmp_path/a/evil.txt
        (artifact / rel).resolve().write_bytes(payload)  # present in the source, so a copy would succeed
        outside = tmp_path / "a" / "evil.txt"
    else:
        outside = tmp_path / "abs" / "evil.txt"
        rel = str(outside)  # joined onto a file:// source URI it names a file inside the source
        (artifact / rel.lstrip("/")).parent.mkdir(parents=True)
        (artifact / rel.lstrip("/")).write_bytes(payload)
    _add_to_manifest(artifact, rel, payload)
    with pytest.raises(ArtifactError, match=f"refused entry '{rel}'"):
        pull("exp", (tmp_path / "store").as_uri(), to)
    assert not outside.exists()
    assert not (to / "artifact").exists() or not any((to / "artifact").rglob("*"))


def test_load_artifact_refuses_member_files_outside_its_folder(ensemble, tmp_path):
    artifact = _store_copy(ensemble, tmp_path)
    member_json = artifact / "members" / "trial_0" / "member.json"
    settings = json.loads(member_json.read_text())
    # a valid state dict outside the artifact: followed, it would load without complaint
    shutil.copy(artifact / "members" / "trial_0" / settings["folds"][0], tmp_path / "store" / "exp" / "outside.safetensors")
    settings["folds"][0] = "../../../../outside.safetensors"
    member_json.write_text(json.dumps(settings))
    _add_to_manifest(artifact, "members/trial_0/member.json", member_json.read_bytes())
    with pytest.raises(ArtifactError, match="refused entry '../../../../outside.safetensors'"):
        load_artifact(artifact)


def test_hidden_files_in_a_copied_artifact_are_ignored(ensemble, tmp_path):
    artifact = _store_copy(ensemble, tmp_path)
    (artifact / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (artifact / "members" / "trial_0" / "._fold0.safetensors").write_bytes(b"resource fork")
    art = load_artifact(artifact)
    assert len(art.members) == 2
    (artifact / "members" / "trial_0" / "notes.txt").write_text("not hidden: still refused")
    with pytest.raises(ArtifactError, match="notes.txt is not in the manifest"):
        load_artifact(artifact)


class _FakeBucket:
    """An object store whose listing holds a key with "..", as S3 allows."""

    def __init__(self, keys: dict[str, bytes]):
        self.keys = keys

    def get_file_info(self, what):
        if isinstance(what, pafs.FileSelector):
            return [pafs.FileInfo(f"bucket/data/{k}", type=pafs.FileType.File, size=len(v), mtime=0)
                    for k, v in self.keys.items()]
        return pafs.FileInfo(what, type=pafs.FileType.Directory)

    def open_input_stream(self, path):
        return io.BytesIO(self.keys[path[len("bucket/data/"):]])


def test_materialize_data_refuses_object_keys_that_leave_the_cache(tmp_path, monkeypatch):
    from raytag.cluster import materialize_data

    bucket = _FakeBucket({"train.csv": b"fname,labels\n", "../../escaped.txt": b"x"})
    opener = type("Opener", (), {"from_uri": staticmethod(lambda uri: (bucket, "bucket/data"))})
    monkeypatch.setattr(pafs, "FileSystem", opener)
    cache = tmp_path / "cache" / "inner"
    with pytest.raises(DatasetError, match=r"refused entry '\.\./\.\./escaped.txt'"):
        materialize_data("s3://bucket/data", cache_root=cache)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "escaped" in p.name]
