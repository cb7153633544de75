"""Paths that may be local folders or URIs (s3://, gs://, file://), through `pyarrow.fs`.

Every module that reads or writes under `--storage` goes through these few helpers, so
a sweep on a cluster with an s3:// bucket and a laptop run in `results/` share one code
path. A plain path (relative or absolute) is a local path; "scheme://..." is a URI handed
to `pyarrow.fs.FileSystem.from_uri` ("s3:/b/k", what pathlib and typer make of
"s3://b/k", is repaired first). `is_uri` is raytag's one test for a URI.

Writes are whole-file: a local file is written to a temporary name and renamed, so a
reader never sees half a file; an object store PUT is already all-or-nothing.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import posixpath
import re
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raytag.errors import StorageError

_CHUNK = 4 << 20  # bytes per read when streaming a file (hashing, copying)
PARTIAL_SUFFIX = ".partial"


_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# typer/pathlib turn "s3://b/k" into "s3:/b/k"; accept that form for the schemes we know.
_MANGLED_URI = re.compile(r"^(s3|gs|gcs|hdfs|file):/(?!/)")
_CLOUD_SCHEMES = ("s3", "gs", "gcs")  # object stores reached over the network


def is_uri(path: str | os.PathLike) -> bool:
    """True for "scheme://..." (and the "s3:/..." form pathlib leaves of it)."""
    text = str(path)
    return bool(_URI.match(text) or _MANGLED_URI.match(text))


def normalize_uri(path: str | os.PathLike) -> str:
    """Repair a URI that went through pathlib ("s3:/b/k" -> "s3://b/k"); others unchanged."""
    text = str(path)
    if _MANGLED_URI.match(text):
        scheme, rest = text.split(":/", 1)
        return f"{scheme}://{'/' if scheme == 'file' else ''}{rest}"
    return text


def is_local_path(path: str | os.PathLike) -> bool:
    """A path on this machine's disks: no scheme, or file://."""
    text = normalize_uri(path)
    match = _URI.match(text)
    return match is None or match.group(1).lower() == "file"


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    text = normalize_uri(path)
    if not is_uri(text):  # "~/runs" as `absolute` reads it (a quoted --storage reaches here unexpanded)
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise _unopenable_uri(text, err) from err


def _unopenable_uri(text: str, err: Exception) -> StorageError:
    """Why a URI could not be opened: a scheme raytag does not read, or one it does whose
    service did not answer (pyarrow asks s3 for the bucket's region as it opens it)."""
    scheme = _URI.match(text).group(1).lower()
    if scheme not in (*_CLOUD_SCHEMES, "file", "hdfs"):  # what pyarrow opens
        return StorageError(f"{text}: unsupported storage scheme '{scheme}://' ({err}); "
                            "use a local folder, file://, s3:// or gs://")
    if isinstance(err, OSError) and scheme in _CLOUD_SCHEMES:
        return StorageError(f"{text}: cannot reach {scheme}:// storage ({err}); check the network, the "
                            "bucket's name and your credentials")
    return StorageError(f"{text}: cannot open this storage URI ({err})")


def absolute(path: str | os.PathLike) -> str:
    """An absolute local path (what Ray's storage_path needs); URIs pass through (repaired)."""
    text = normalize_uri(path)
    return text.rstrip("/") if is_uri(text) else str(Path(text).expanduser().resolve())


# what a URI path may hold as it is (RFC 3986 pchar); anything else (space, %, ?, #,
# non-ASCII) is percent-encoded, and pyarrow decodes it back to the name
_URI_PATH_SAFE = "/!$&'()*+,;=:@~"


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts with "/" keeping a URI's scheme ("s3://b/x" + "y" -> "s3://b/x/y") and
    its options ("s3://b/x?endpoint_override=h:9000" + "y" -> "s3://b/x/y?endpoint_override=h:9000":
    appended after them, the parts would be read as an option's value and every file would
    land on one object). Under a URI the parts are file names as `list_files` gives them,
    percent-encoded ("x y.wav" -> "x%20y.wav", "50%.wav" -> "50%25.wav"); the base is a
    URI already and is kept as it is."""
    text = normalize_uri(base)
    if not is_uri(text):
        return os.path.join(text, *parts)
    head, sep, options = text.partition("?")
    out = head.rstrip("/")
    for part in parts:
        out = f"{out}/{quote(str(part).strip('/'), safe=_URI_PATH_SAFE)}"
    return out + sep + options


def basename(path: str | os.PathLike) -> str:
    """The last part of a local path or a URI ("s3://b/x/exp/?region=r" -> "exp")."""
    text = normalize_uri(path)
    if not is_uri(text):
        return text.rstrip("/").rsplit("/", 1)[-1]
    return unquote(text.partition("?")[0].rstrip("/").rsplit("/", 1)[-1])  # the name, as join was given it


def parent(path: str | os.PathLike) -> str:
    """The folder holding a local path or a URI's object, keeping the URI's options
    ("s3://b/x/exp?endpoint_override=http://m:9000" -> "s3://b/x?endpoint_override=http://m:9000":
    split after them, an option's "/" would be cut instead). A bucket is its own parent."""
    text = normalize_uri(path)
    if not is_uri(text):
        return os.path.dirname(text.rstrip("/") or "/")
    head, sep, options = text.partition("?")
    scheme = _URI.match(head).group(0)
    folders = head[len(scheme):].rstrip("/")
    up = folders.rsplit("/", 1)[0] or folders[:1]  # "file:///a" -> "file:///"
    return scheme + up + sep + options


def safe_relpath(name, where: str = "", error: type = StorageError) -> str:
    """`name` as a "/"-separated relative path that stays inside its folder, or `error`
    naming the entry. Names come from files other people write (a manifest, member.json,
    object-store keys), so an absolute name or a ".." must never pick where we write."""
    text = str(name) if isinstance(name, (str, os.PathLike)) else None
    prefix = f"{where}: " if where else ""
    if not text:
        raise error(f"{prefix}refused entry {name!r}: not a file name")
    parts = re.split(r"[/\\]", text)
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text) or os.path.isabs(text):
        why = "an absolute path"
    elif ".." in parts:
        why = 'it contains ".." and would leave its folder'
    elif "\0" in text:
        why = "it contains a NUL byte"
    elif not [p for p in parts if p not in ("", ".")]:
        why = "not a file name"
    else:  # ("\\" counts as a separator above: harmless here, a traversal on Windows)
        return "/".join(p for p in text.split("/") if p not in ("", "."))
    raise error(f"{prefix}refused entry {text!r}: {why}; names must be relative paths inside the folder")


def check_name(name: str, option: str) -> str:
    """An experiment or run name as the command line gave it (`option`: "--name",
    "EXPERIMENT"...), without trailing slashes (`report fat2019/`, as shell completion and
    `aws s3 ls` give it), or StorageError: it is one folder directly under --storage, so an
    empty name (the storage itself), ".", ".." or a "/" (a folder elsewhere) is refused."""
    text = str(name).rstrip("/") or str(name)  # "/" alone stays, refused as a path
    if not text.strip():
        why = "empty"
    elif re.search(r"[/\\]", text):
        why = "a name is one folder directly under --storage, not a path" + _parent_hint(text)
    elif text in (".", ".."):
        why = f"'{text}' names no folder of its own"
    elif "\0" in text:
        why = "it contains a NUL byte"
    else:
        return text
    raise StorageError(f"{option} {text!r}: {why}; give a name such as fat2019 (the folder it has, "
                       "or will have, in --storage)")


def _parent_hint(text: str) -> str:
    """How to name a folder deeper down: its parent as --storage, the last part as the name."""
    parent, _, last = text.rpartition("/")
    if "\\" in text or not parent or last in ("", ".", ".."):
        return ""
    return (f"; to use the folder {last!r} in {parent}/ under --storage, point --storage at the folder "
            f"that holds it: --storage <storage>/{parent} with the name {last}")


def nonempty_option(value, option: str, give: str, error: type = StorageError) -> str:
    """The path or URI a command-line `option` names, as text (a URI pathlib mangled
    repaired), or `error`: an empty one is an unset shell variable ("$DIR"), which as a path
    would mean the current folder. `give`: what to give instead."""
    text = normalize_uri(value)
    if not text.strip():
        raise error(f"{option} {text!r}: empty; {give}")
    return text


def local_folder_option(value, option: str, give: str, why_local: str, error: type = StorageError) -> Path:
    """The folder on this machine a command-line `option` names, absolute: a file:// URI is
    its path, "~" is expanded. Refused with `error`: an empty one (`nonempty_option`), and a
    URI of another file system (Path("s3://b/k") would be a local folder "s3:"); `why_local`
    says why the folder must be local and what to give."""
    text = nonempty_option(value, option, give, error)
    if is_uri(text):
        if not is_local_path(text):
            raise error(f"{option} {text}: a URI, but {why_local}")
        text = resolve(text)[1]
    return Path(text).expanduser().absolute()


def nearest_existing(path: Path) -> Path:
    """`path` if it exists, else its nearest parent that does: what decides whether
    something can be written there (it may be a file, or a folder without write access)."""
    return next(folder for folder in (path, *path.parents) if folder.exists())


def safe_join(root, name, where: str = "", error: type = StorageError) -> str:
    """`root` joined with the untrusted relative `name` (see `safe_relpath`); for a local
    folder the result must also resolve inside `root` (no symlink out of it)."""
    rel = safe_relpath(name, where, error)
    path = join(root, rel)
    if not is_uri(root):
        real_root = os.path.realpath(str(root))
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            prefix = f"{where}: " if where else ""
            raise error(f"{prefix}refused entry {str(name)!r}: it resolves to {real}, outside {real_root}")
    return path


def _info(path) -> pafs.FileInfo:
    fs, inner = resolve(path)
    return fs.get_file_info(inner)


def exists(path) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def is_dir(path) -> bool:
    return _info(path).type == pafs.FileType.Directory


def size(path) -> int:
    """Size in bytes of a file; StorageError if there is none."""
    info = _info(path)
    if info.type != pafs.FileType.File:
        raise StorageError(f"{path}: no such file")
    return int(info.size)


def makedirs(path) -> None:
    fs, inner = resolve(path)
    fs.create_dir(inner, recursive=True)


def remove_file(path) -> None:
    """Delete a file (no error if it is absent)."""
    _remove(path)


def remove_tree(path) -> None:
    """Delete a folder and everything under it (no error if it is absent)."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        fs.delete_dir(inner)


def write_local_atomically(path, write) -> None:
    """Write a local file whole or not at all: `write(fh)` fills a temporary name of this
    writer's own beside `path` (flushed to disk), which is then renamed over it. A kill
    mid-write leaves no damaged file for every later read to fail on, and two writers of one
    path (two trials building one store, two distills sharing a teacher cache) never write
    into, or rename away, each other's file; the content is streamed, never held whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_bytes(path) -> bytes:
    fs, inner = resolve(path)
    try:
        with fs.open_input_stream(inner, compression=None) as stream:
            return stream.read()
    except FileNotFoundError as err:
        raise StorageError(f"{path}: no such file") from err


def write_bytes(path, data: bytes) -> None:
    """Write a whole file, creating its folder; never leaves half a file under `path` (a local
    one through `write_local_atomically`; an object store's PUT is all-or-nothing already)."""
    fs, inner = resolve(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        write_local_atomically(inner, lambda fh: fh.write(data))
    else:
        with fs.open_output_stream(inner, compression=None) as out:
            out.write(data)


def check_writable(folder) -> None:
    """StorageError naming `folder` unless a small file can be written there and removed:
    a full disk, lost write permission, or a file where the folder should be."""
    probe = join(folder, f".raytag-probe-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes(probe, b"ok")
        _remove(probe)
    except OSError as err:  # pyarrow's IO errors are OSErrors too
        raise StorageError(f"cannot write to {folder}: {err}") from err


# An OSError with one of these numbers is the storage's fault, not the code's: no space or
# quota left, or no write access (EACCES / EPERM / EROFS) to a path under the storage.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
# the same in an error that only came back as text (a Ray worker's traceback): "[Errno 28] ..."
_ERRNO_TEXT = re.compile(r"\[errno (\d+)\][^\n]*", re.IGNORECASE)


def storage_fault(err: BaseException, folder) -> Optional[str]:
    """Why `err` is the storage's fault rather than the code's, or None.

    A fault when `folder` cannot be written now (`check_writable`), or when an OSError in
    the chain of `err` is a full disk (anywhere) or lost write access to a path under
    `folder`. Follows `__cause__` / `__context__` and the exceptions Ray wraps (a task's
    `cause`, Ray Train's `worker_failures` and `controller_failure`); a worker's error that
    only survives as text counts by its "[Errno N]" line."""
    try:
        check_writable(folder)
    except StorageError as probe:
        return str(probe)
    where = str(folder)
    for exc in exception_chain(err):
        if isinstance(exc, OSError) and exc.errno is not None:
            on_storage = where in str(exc.filename or "") or where in str(exc)
            if exc.errno in _NO_SPACE or (exc.errno in _NO_ACCESS and on_storage):
                return f"cannot write to {exc.filename or folder}: {exc}"
        for match in _ERRNO_TEXT.finditer(str(exc)):
            number, line = int(match.group(1)), match.group(0)
            if number in _NO_SPACE or (number in _NO_ACCESS and where in line):
                return f"cannot write to {folder}: {line.strip()}"
    return None


def exception_chain(err: Optional[BaseException]) -> Iterator[BaseException]:
    """`err` and every exception behind it: causes, contexts and the ones Ray wraps."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        exc = todo.pop()
        if not isinstance(exc, BaseException) or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += [exc.__cause__, exc.__context__, getattr(exc, "cause", None),
                 getattr(exc, "controller_failure", None),
                 *(getattr(exc, "worker_failures", None) or {}).values()]


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_csv(path, **kwargs) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(read_bytes(path)), **kwargs)


def write_csv(df: pd.DataFrame, path, index: bool = False) -> None:
    write_bytes(path, df.to_csv(index=index).encode("utf-8"))


def read_parquet_table(path) -> pa.Table:
    """The Arrow table (keeps the schema metadata, e.g. `raytag.classes`)."""
    return pq.read_table(io.BytesIO(read_bytes(path)))


def read_parquet(path) -> pd.DataFrame:
    return read_parquet_table(path).to_pandas()


def write_parquet(df: pd.DataFrame, path, metadata: Optional[dict[str, str]] = None) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_bytes(path, sink.getvalue())


def list_files(path) -> list[str]:
    """Relative paths ("a/b.txt", "/" separated, sorted) of every file under a folder."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise StorageError(f"{path}: no such folder")
    selector = pafs.FileSelector(inner, recursive=True)
    base = inner.rstrip("/") + "/"
    out = []
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            out.append(info.path[len(base):].replace(os.sep, "/"))
    return sorted(out)


def list_dir(path) -> list[str]:
    """Names of the entries (files and folders) directly in a folder; [] if it is absent."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    return sorted(posixpath.basename(info.path.rstrip("/")) for info in fs.get_file_info(pafs.FileSelector(inner)))


def file_stamps(path) -> dict[str, tuple]:
    """The files directly in a folder (not below): name -> (size, mtime). A missing folder has none."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return {}
    return {info.base_name: (info.size, info.mtime_ns)
            for info in fs.get_file_info(pafs.FileSelector(inner, recursive=False))
            if info.type == pafs.FileType.File}


def local_file_stamp(path) -> tuple[int, int, int]:
    """(size, mtime_ns, ctime_ns) of a local file as it is now; (-1, -1, -1) where there is none.
    For a cache keyed on the files it was made from: the change time moves whenever a file is
    rewritten, even with its size and mtime kept (`cp -p`, `rsync -a`), and no tool sets it
    back. It also moves on chmod, chown, a hard link or a rename: such a cache is then made
    again without need, never reused wrongly."""
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    """SHA-256 of a file, read in chunks (weights can be large)."""
    fs, inner = resolve(path)
    digest = hashlib.sha256()
    with fs.open_input_stream(inner, compression=None) as stream:
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class CopyStats:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already present with the same size and hash


def copy_file(src, dst) -> None:
    """Stream one file across file systems; written under a ".partial" name then renamed,
    so an interrupted copy never looks finished."""
    src_fs, src_inner = resolve(src)
    dst_fs, dst_inner = resolve(dst)
    dst_fs.create_dir(posixpath.dirname(dst_inner), recursive=True)
    partial = dst_inner + PARTIAL_SUFFIX
    # compression=None everywhere: pyarrow otherwise (un)compresses by the name's extension, so
    # a run's .gz file would be copied inflated and then fail its own hash check
    with src_fs.open_input_stream(src_inner, compression=None) as reader, \
            dst_fs.open_output_stream(partial, compression=None) as writer:
        while True:
            chunk = reader.read(_CHUNK)
            if not chunk:
                break
            writer.write(chunk)
    dst_fs.move(partial, dst_inner)


def copy_tree(src, dst, files: Optional[list[str]] = None,
              expected_sha: Optional[dict[str, str]] = None) -> CopyStats:
    """Copy the files under folder `src` to folder `dst`, resumable.

    A file already at the destination with the same size and SHA-256 as the source (or as
    `expected_sha[relpath]` when given, which saves hashing the source) is skipped, so
    re-running after an interruption copies only what is missing or incomplete.
    `files` limits the copy to these relative paths (default: all files under `src`).
    """
    rel_paths = list_files(src) if files is None else list(files)
    # every name is checked before the first byte is written
    targets = {rel: safe_join(dst, rel, where=f"copy {src} -> {dst}") for rel in rel_paths}
    stats = CopyStats()
    for rel in rel_paths:
        source, target = join(src, rel), targets[rel]
        if _same_file(source, target, (expected_sha or {}).get(rel)):
            stats.skipped.append(rel)
            continue
        copy_file(source, target)
        stats.copied.append(rel)
    return stats


def _same_file(source, target, expected: Optional[str]) -> bool:
    target_info = _info(target)
    if target_info.type != pafs.FileType.File:
        return False
    if target_info.size != size(source):
        return False
    return sha256_file(target) == (expected or sha256_file(source))


# ----------------------------------------------------------------------------- one writer per folder
LOCK_NAME = ".raytag.lock"


class LockHeld(StorageError):
    """Another live process holds the folder's lock."""


def _pid_start(pid: int) -> Optional[str]:
    """A process's start time (Linux /proc, clock ticks since boot); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _pid_start(os.getpid())}


def _holder_is_gone(holder: dict) -> bool:
    """True when the lock's process is known to be dead: same host, and no process with
    that pid (and start time, so a reused pid is not taken for the holder). A holder on
    another host cannot be checked from here."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        pid = int(holder.get("pid"))
    except (TypeError, ValueError):
        return False
    if not _pid_alive(pid):
        return True
    started = holder.get("pid_started")
    return started is not None and _pid_start(pid) not in (None, started)


@contextmanager
def folder_lock(folder, what: str, clear_hint: str = "") -> Iterator[dict]:
    """Hold `<folder>/.raytag.lock` while the block runs; LockHeld if a live process holds it.

    The lock records host, pid (with its start time, so a reused pid is not mistaken for
    the holder), time and command. A lock left by a dead process on this host is taken
    over; one from another host is refused with its record and how to clear it. Local
    folders get an atomic create; on an object store (no create-if-absent) the lock is
    written and read back, which catches all but a near-simultaneous start.
    """
    path = join(folder, LOCK_NAME)
    me = {**_this_process(), "token": uuid.uuid4().hex,
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
    data = json.dumps(me, indent=1).encode()
    try:
        for _ in range(3):
            holder = _read_lock(path)
            if holder is not None:
                if not _holder_is_gone(holder):
                    raise LockHeld(
                        f"{what} is in use: {path} is held by pid {holder.get('pid')} on host "
                        f"{holder.get('host')} since {holder.get('started')} ({holder.get('command', '?')}). "
                        f"Wait for that run to finish or stop it. If it is gone (its machine died), "
                        f"delete {path}{clear_hint}."
                    )
                _remove(path)  # its process is dead: a stale lock must not block a resume
            if _create_exclusive(path, data):
                break
        else:
            raise LockHeld(f"{what}: could not take the lock {path}; another run keeps taking it")
    except OSError as err:  # the storage itself is unwritable (full, read-only, a file for the folder)
        raise StorageError(f"{what}: cannot write its lock {path}: {err}") from err
    try:
        yield me
    finally:
        try:
            holder = _read_lock(path)
            if holder is not None and holder.get("token") == me["token"]:
                _remove(path)
        except OSError:  # storage gone unwritable: the lock of this (ending) process is taken over later
            pass


def _read_lock(path) -> Optional[dict]:
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except StorageError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {"host": "?", "pid": "?", "started": "?", "command": "unreadable lock file"}


def _create_exclusive(path, data: bytes) -> bool:
    """Write the lock file only if it does not exist; False when someone else got there."""
    fs, inner = resolve(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            fd = os.open(inner, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except OSError:  # a full disk: an empty lock would look held by an unknown process
            _remove(path)
            raise
        return True
    with fs.open_output_stream(inner, compression=None) as out:
        out.write(data)
    return read_bytes(path) == data  # the last writer wins; a loser sees another token


def _remove(path) -> None:
    fs, inner = resolve(path)
    try:
        fs.delete_file(inner)
    except (FileNotFoundError, NotADirectoryError):
        pass
