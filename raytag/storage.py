"""Paths that may be local folders or URIs (s3://, gs://, file://), through `pyarrow.fs`.

Every module that reads or writes under `--storage` goes through these few helpers, so
a sweep on a cluster with an s3:// bucket and a laptop run in `results/` share one code
path. A plain path (relative or absolute) is a local path; anything with "://" is a URI
handed to `pyarrow.fs.FileSystem.from_uri`.

Writes are whole-file: a local file is written to a temporary name and renamed, so a
reader never sees half a file; an object store PUT is already all-or-nothing.
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raytag.errors import StorageError

_CHUNK = 4 << 20  # bytes per read when streaming a file (hashing, copying)
PARTIAL_SUFFIX = ".partial"


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    text = str(path)
    if not is_uri(text):
        return pafs.LocalFileSystem(), os.path.abspath(text)
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise StorageError(
            f"{text}: cannot open this storage URI ({err}); use a local folder, file://, s3:// or gs://"
        ) from err


def absolute(path: str | os.PathLike) -> str:
    """An absolute local path (what Ray's storage_path needs); URIs pass through unchanged."""
    text = str(path)
    return text.rstrip("/") if is_uri(text) else str(Path(text).expanduser().resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts with "/" keeping a URI's scheme ("s3://b/x" + "y" -> "s3://b/x/y")."""
    text = str(base)
    if not is_uri(text):
        return os.path.join(text, *parts)
    out = text.rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


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


def remove_tree(path) -> None:
    """Delete a folder and everything under it (no error if it is absent)."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        fs.delete_dir(inner)


def read_bytes(path) -> bytes:
    fs, inner = resolve(path)
    try:
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    except FileNotFoundError as err:
        raise StorageError(f"{path}: no such file") from err


def write_bytes(path, data: bytes) -> None:
    """Write a whole file, creating its folder; never leaves half a file under `path`."""
    fs, inner = resolve(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{inner}.{uuid.uuid4().hex[:8]}.tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, inner)
    else:
        with fs.open_output_stream(inner) as out:
            out.write(data)


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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    """SHA-256 of a file, read in chunks (weights can be large)."""
    fs, inner = resolve(path)
    digest = hashlib.sha256()
    with fs.open_input_stream(inner) as stream:
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
    with src_fs.open_input_stream(src_inner) as reader, dst_fs.open_output_stream(partial) as writer:
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
