"""raytag.storage: names under a URI are percent-encoded by `join`, as pyarrow decodes them; local
writes are whole or not at all; a local file's stamp tells other bytes under the same name."""
import os
import resource
import signal
import time
import types

import pytest

from raytag import storage

ODD_NAMES = ["x y.wav", "50%.wav", "50%25.wav", "a#b.wav", "what?.wav", "café.wav", "a+b=c,d.wav"]


def test_names_listed_under_a_file_uri_can_be_joined_and_read_back(tmp_path):
    (tmp_path / "sub dir").mkdir()
    for i, name in enumerate(ODD_NAMES):
        (tmp_path / "sub dir" / name).write_bytes(b"x" * (i + 1))
    base = f"file://{tmp_path}"
    listed = storage.list_files(storage.join(base, "sub dir"))
    assert sorted(listed) == sorted(ODD_NAMES)
    for name in listed:
        path = storage.join(base, "sub dir", name)
        assert storage.size(path) == (tmp_path / "sub dir" / name).stat().st_size, path
        assert storage.read_bytes(path) == (tmp_path / "sub dir" / name).read_bytes()
        assert storage.basename(path) == name
    assert storage.join("s3://b/p?region=r", "x y", "50%.wav") == "s3://b/p/x%20y/50%25.wav?region=r"


def test_the_parent_of_a_uri_keeps_its_options():
    """An option's value may hold "/" (an endpoint URL): the parent is taken before the "?"."""
    options = "?endpoint_override=http://m:9000"
    assert storage.parent(f"s3://b/x/exp{options}") == f"s3://b/x{options}"
    assert storage.parent(f"s3://b/x/exp/{options}") == f"s3://b/x{options}"
    assert storage.parent("s3://b/x/exp") == "s3://b/x"
    assert storage.parent("s3://b") == "s3://b"  # a bucket has no parent folder to go to
    assert storage.parent("file:///r/x") == "file:///r" and storage.parent("file:///r") == "file:///"
    assert storage.parent("/r/x/exp/") == "/r/x"


def test_a_local_folder_option_reads_file_uris_and_home_and_refuses_empty_and_bucket_values(tmp_path, monkeypatch):
    """A folder option that must be on this machine (make-demo-data's OUT): absolute, whatever
    form the user wrote it in; an empty or bucket value refused with the caller's error class."""
    from raytag.errors import DatasetError

    monkeypatch.setenv("HOME", str(tmp_path))
    folder = lambda value: storage.local_folder_option(value, "--dir", "give a folder", "give a local one",
                                                       DatasetError)
    assert folder(f"file://{tmp_path}/a") == folder("~/a") == folder(tmp_path / "a") == tmp_path / "a"
    with pytest.raises(DatasetError, match="--dir '': empty; give a folder"):
        folder("")
    with pytest.raises(DatasetError, match="--dir s3://b/k: a URI, but give a local one"):
        folder("s3://b/k")


def test_a_local_write_is_flushed_to_disk_and_a_failed_one_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """write_bytes had its own temporary-then-rename write, which never flushed the file to
    disk (a power cut after the rename could leave an empty file); it now goes through
    write_local_atomically, like every other local whole-file write."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "new" / "folder" / "state.json"
    storage.write_bytes(str(path), b"old")  # its folder is made
    assert path.read_bytes() == b"old" and synced
    # a disk that fills up mid-write (the file size limit stands in for it)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(OSError):
            storage.write_bytes(str(path), b"x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert path.read_bytes() == b"old" and os.listdir(path.parent) == ["state.json"]


def test_a_local_files_stamp_moves_when_it_is_replaced_keeping_its_size_and_mtime(tmp_path):
    """What the teachers' caches key on: `cp -p` and `rsync -a` keep a file's size and mtime
    (size and mtime alone took other audio for the old), not its change time."""
    path = tmp_path / "clip.wav"
    path.write_bytes(b"a" * 10)
    before, st = storage.local_file_stamp(path), path.stat()
    assert before == (10, st.st_mtime_ns, st.st_ctime_ns) and storage.local_file_stamp(str(path)) == before
    time.sleep(0.01)  # change times tick with the kernel's clock, coarsely on some kernels
    path.write_bytes(b"b" * 10)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = storage.local_file_stamp(path)
    assert after[:2] == before[:2] and after != before
    assert storage.local_file_stamp(tmp_path / "missing.wav") == (-1, -1, -1)


def test_an_unreachable_bucket_is_not_called_an_unsupported_uri(tmp_path, monkeypatch):
    """`raytag predict s3://bucket/... clip.wav` off the network said "cannot open this storage
    URI ...; use a local folder, file://, s3:// or gs://" of an s3:// URI; now an s3 or gs URI
    whose service does not answer points at the network and credentials, and only a scheme
    raytag does not read is called unsupported."""
    from pyarrow import fs as pafs
    from typer.testing import CliRunner

    from raytag.cli import app

    def offline(uri):
        raise OSError("When resolving region for bucket 'bucket': AWS Error NETWORK_CONNECTION "
                      "during HeadBucket operation: Could not resolve host")

    with pytest.raises(storage.StorageError, match="unsupported storage scheme 'nosuchscheme://'"):
        storage.resolve("nosuchscheme://x/y")
    offline_fs = types.SimpleNamespace(**{n: getattr(pafs, n) for n in dir(pafs) if not n.startswith("_")})
    offline_fs.FileSystem = types.SimpleNamespace(from_uri=offline)  # pyarrow's own type cannot be patched
    monkeypatch.setattr(storage, "pafs", offline_fs)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF")
    result = CliRunner().invoke(app, ["predict", "s3://bucket/exp/ensemble/artifact", str(clip),
                                      "--out", str(tmp_path / "s.csv")], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "cannot reach s3:// storage" in text and "credentials" in text, text
    assert "use a local folder" not in text
