"""Decode one audio file (wav, flac, ogg: whatever libsndfile reads) to mono float32
at a chosen sample rate, or read only its header.

Every way a file can be unusable raises `AudioDecodeError(path, reason)` so the caller
can leave that one clip out, name it and carry on. `AudioReadError`, its subclass, is a
file that could not be opened or read for a reason that may pass (not found, permission
denied, an I/O error, libsndfile's "System error."), so a cache must try it again rather
than remember it. A file libsndfile reads but cannot make sense of (unrecognised format,
damaged data) fails the same way every time: a plain AudioDecodeError, remembered.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import soxr

from raytag.errors import AudioDecodeError

log = logging.getLogger("raytag.data")

# soundfile raises LibsndfileError (a RuntimeError) for bad data, plain OSError/TypeError
# for some unreadable files; all of them mean "this file cannot be decoded".
_DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError)


class AudioReadError(AudioDecodeError):
    """The file could not be opened or read (an I/O failure): unlike a damaged file or
    bad samples (NaN, silence, too short), another try may succeed."""


class AudioMemoryError(AudioReadError):
    """The file needs more memory to decode whole than this process may take now: refused
    unread. With more memory free another try may succeed, so it is not remembered either."""


_SF_SYSTEM_ERROR = 2  # libsndfile's SF_ERR_SYSTEM: the OS refused the open or read


def _may_pass(err: Exception) -> bool:
    """Whether a decoder error is an I/O failure (worth another try), not bad contents."""
    if isinstance(err, OSError):
        return err.errno is not None
    return isinstance(err, sf.LibsndfileError) and err.code == _SF_SYSTEM_ERROR


def _decode_error(path, what: str, err: Exception) -> AudioDecodeError:
    """AudioReadError for an I/O failure, else AudioDecodeError (the same every time)."""
    kind = AudioReadError if _may_pass(err) else AudioDecodeError
    return kind(path, f"{what}: {_reason(path, err)}")


def min_samples(features) -> int:
    """The shortest usable clip, in samples at `features.sample_rate`: one analysis frame
    (n_fft). The one rule for the dataset reader, the feature store and `raytag predict`."""
    return int(features.n_fft)


def min_seconds(features) -> float:
    """`min_samples` in seconds, for checks made from file headers."""
    return min_samples(features) / float(features.sample_rate)


def resampled_length(frames: int, rate_in: int, rate_out: Optional[int]) -> int:
    """How many samples `frames` at `rate_in` become once `load_audio` resamples them to
    `rate_out` (None: not resampled). soxr rounds the exact length half up; checks made
    from a header must count the same way as the decoder or they disagree at the limit."""
    if not rate_out or int(rate_out) == int(rate_in):
        return int(frames)
    return (2 * int(frames) * int(rate_out) + int(rate_in)) // (2 * int(rate_in))


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration_s, sample_rate, channels) from the file header only (no decoding).

    A file with a valid header and no samples returns duration 0.0; the caller decides
    what is too short.
    """
    _check_file(path)
    _check_complete(path)
    try:
        info = sf.info(str(path))
    except _DECODE_ERRORS as err:
        raise _decode_error(path, "unreadable audio header", err) from err
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioDecodeError(
            path, f"bad header: sample rate {info.samplerate}, channels {info.channels}"
        )
    frames = max(int(info.frames), 0)
    return frames / float(info.samplerate), int(info.samplerate), int(info.channels)


def load_audio(
    path: str | Path, sample_rate: Optional[int], min_samples: int = 1, max_bytes: Optional[int] = None
) -> np.ndarray:
    """Decode `path` to a mono float32 waveform at `sample_rate` (None: keep the file's rate).

    Channels are averaged. Resampling uses soxr (high quality). Raises AudioDecodeError
    when the file is empty or cannot be decoded, holds no samples, holds any NaN or inf
    sample (never silently zeroed), is digital silence (every sample 0), or is shorter
    than `min_samples` after resampling (pass `min_samples(features)`: one frame).
    With `max_bytes` (e.g. `decode_memory_budget()`), a file whose header says it needs more
    memory than that to decode whole is refused before it is read (AudioMemoryError).
    """
    _check_file(path)
    _check_complete(path)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            if max_bytes is not None:
                _refuse_beyond_memory(path, f.frames, f.channels, rate, sample_rate, max_bytes)
            if f.subtype == "PCM_16":
                # libsndfile's own int16 -> float32 conversion costs 5x the read here; x / 32768
                # is exact in float32, so this gives the same samples
                data = f.read(dtype="int16", always_2d=True).astype(np.float32) * np.float32(1 / 32768)
            else:
                data = f.read(dtype="float32", always_2d=True)
    except _DECODE_ERRORS as err:
        raise _decode_error(path, "cannot decode", err) from err
    if data.shape[0] == 0:
        raise AudioDecodeError(path, "empty audio (0 samples)")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int((~finite.all(axis=1)).sum())
        raise AudioDecodeError(path, f"{bad} of {data.shape[0]} samples are not finite (NaN or inf); damaged file")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not wave.any():  # after the mix: two channels that cancel exactly are silence too
        what = "samples are 0" if not data.any() else "samples are 0 once its channels are averaged (they cancel)"
        raise AudioDecodeError(path, f"digital silence: all {data.shape[0]} {what}")
    if sample_rate is not None and int(sample_rate) != rate:
        wave = soxr.resample(wave, rate, int(sample_rate), quality="HQ")
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if wave.size < min_samples:
        rate_out = sample_rate or rate
        raise AudioDecodeError(
            path,
            f"too short: {wave.size} samples at {rate_out} Hz, need at least {min_samples} (one frame)",
        )
    return wave


def samples_over_cap(frames: int, channels: int, cap: int) -> Optional[str]:
    """"N samples (F frames x C channels)" where a file of `frames` x `channels` (its
    header's count) decodes to more than `cap` samples, else None: the rule by which
    `raytag serve` refuses a long upload and `raytag predict` a file it has no memory for."""
    samples = int(frames) * int(channels)
    return f"{samples} samples ({frames} frames x {channels} channels)" if samples > cap else None


# load_audio's memory per sample (frames x channels): the float32 samples, a second copy
# while 16-bit ones are scaled, the finite mask (5-7 bytes measured with tracemalloc)
DECODE_BYTES_PER_SAMPLE = 9


def decode_bytes_per_sample(channels: int, rate_in: int, rate_out: Optional[int]) -> float:
    """About the memory load_audio needs per sample of a file: its samples decoded, then per
    frame the mono mix and the resampled copy (larger than the file when resampling up)."""
    ratio = rate_out / rate_in if rate_out else 1.0
    mix = 4.0 if channels > 1 else 0.0
    return DECODE_BYTES_PER_SAMPLE + (mix + 4.0 * ratio) / channels


def _refuse_beyond_memory(path, frames: int, channels: int, rate_in: int, rate_out: Optional[int],
                          max_bytes: int) -> None:
    per_sample = decode_bytes_per_sample(channels, rate_in, rate_out)
    over = samples_over_cap(frames, channels, int(max_bytes // per_sample))
    if over:
        raise AudioMemoryError(
            path, f"too long to decode whole: {over} need about {_gb(frames * channels * per_sample)} of memory, "
                  f"more than the {_gb(max_bytes)} available; split it into shorter files (or mix it down to mono)")


# A file whose decode needs less than this is never refused for memory. It is several times
# the largest clip of the FSDKaggle sets (30 s of 48 kHz stereo needs about 40 MB) and takes
# in some minutes of CD-quality audio, yet it is small beside what a process holding the
# models already uses. A lower free-memory reading says more about the reading (page cache
# not yet reclaimed, a container briefly over its limit) than about what a decode can get;
# a MemoryError while decoding is still that one file's failure.
DECODE_MEMORY_FLOOR = 256 * 2**20

SYSTEM_ROOT = Path("/")  # where /proc and /sys are; a test gives a folder that stands in for them
MEMINFO = Path("proc/meminfo")
SELF_CGROUP = Path("proc/self/cgroup")
CGROUP_ROOT = Path("sys/fs/cgroup")  # cgroup v2's unified hierarchy
CGROUP_V1_MEMORY = CGROUP_ROOT / "memory"  # cgroup v1's memory controller hierarchy
# memory.stat entries the kernel reclaims before it refuses the cgroup memory: the file
# cache's LRU lists (shmem, e.g. Ray's object store in /dev/shm, is not on them) and
# reclaimable slab, as /proc/meminfo's MemAvailable counts them
RECLAIMABLE = ("inactive_file", "active_file", "slab_reclaimable")
# cgroup v1's memory.stat names for the file cache of the cgroup and its children, the
# cgroup memory.usage_in_bytes counts (v1's memory.stat has no slab)
RECLAIMABLE_V1 = ("total_inactive_file", "total_active_file")
# cgroup v1 writes "no limit" as its largest page-aligned count (9223372036854771712 with
# 4 KiB pages); any limit this large, or above the machine's memory, limits nothing
NO_LIMIT = 2**60


@dataclass(frozen=True)
class _MemoryFiles:
    """How one cgroup version names a cgroup's memory limits, use and reclaimable cache."""

    limits: tuple[str, ...]
    usage: str
    reclaimable: tuple[str, ...]


# v2: memory.max, where the OOM killer steps in, and memory.high, above which the kernel
# throttles the cgroup and reclaims hard (set by systemd's MemoryHigh=, for one)
CGROUP_V2_FILES = _MemoryFiles(("memory.max", "memory.high"), "memory.current", RECLAIMABLE)
CGROUP_V1_FILES = _MemoryFiles(("memory.limit_in_bytes",), "memory.usage_in_bytes", RECLAIMABLE_V1)


def decode_memory_budget(root: Path = SYSTEM_ROOT) -> Optional[int]:
    """The memory one file may take to decode (load_audio's max_bytes): what is free now
    (`available_memory`), never less than DECODE_MEMORY_FLOOR; None where nothing can be
    read (no cap)."""
    free = available_memory(root)
    return None if free is None else max(free, DECODE_MEMORY_FLOOR)


def available_memory(root: Path = SYSTEM_ROOT) -> Optional[int]:
    """Bytes of memory free for this process now: the kernel's MemAvailable, within the
    headroom of its cgroup and of each cgroup above it that has a memory limit (cgroup v2's
    memory.max and memory.high, cgroup v1's memory.limit_in_bytes); None where none of
    these can be read. `root` stands in for / (a test's fake /proc and /sys)."""
    meminfo = _meminfo(Path(root) / MEMINFO)
    rooms = (meminfo.get("MemAvailable"), _cgroup_headroom(Path(root), meminfo.get("MemTotal")))
    free = [n for n in rooms if n is not None]
    return max(min(free), 0) if free else None


def _meminfo(path: Path) -> dict[str, int]:
    """/proc/meminfo's sizes (its kB entries) in bytes; empty where it cannot be read."""
    entries = {}
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(":")
            if value.strip().endswith(" kB"):
                entries[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return entries


def _cgroup_headroom(root: Path, machine_total: Optional[int]) -> Optional[int]:
    """The least headroom of this process's memory cgroups (v2 and v1) and their ancestors
    that have a limit."""
    v2 = _own_cgroup_and_ancestors(root, CGROUP_ROOT, _is_v2_line)
    v1 = _own_cgroup_and_ancestors(root, CGROUP_V1_MEMORY, _is_v1_memory_line)
    folders = [(CGROUP_V2_FILES, folder) for folder in v2] + [(CGROUP_V1_FILES, folder) for folder in v1]
    rooms = [room for files, folder in folders if (room := _headroom(folder, files, machine_total)) is not None]
    return min(rooms) if rooms else None


def _is_v2_line(hierarchy: str, controllers: str) -> bool:
    return hierarchy == "0" and controllers == ""


def _is_v1_memory_line(hierarchy: str, controllers: str) -> bool:
    return "memory" in controllers.split(",")


def _own_cgroup_and_ancestors(root: Path, mount: Path, is_own_line) -> list[Path]:
    """This process's cgroup folder in the hierarchy mounted at `mount` (from its line in
    /proc/self/cgroup, "hierarchy:controllers:path"; within a container's cgroup namespace,
    or where the container sees only its own cgroup, it is the mount itself), then each
    parent up to the mount."""
    top = own = root / mount
    try:
        for line in (root / SELF_CGROUP).read_text().splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if is_own_line(hierarchy, controllers):
                folder = top / path.strip().lstrip("/")
                own = folder if folder.is_dir() and ".." not in folder.parts else top
    except OSError:
        pass
    return [own, *[p for p in own.parents if p.is_relative_to(top)]]


def _headroom(folder: Path, files: _MemoryFiles, machine_total: Optional[int]) -> Optional[int]:
    """A cgroup's tightest memory limit less what it uses that the kernel would not reclaim
    first (its usage charges the page cache of every file read, so a container that has
    read its limit's worth of audio sits near its limit with most of it free to take);
    None without a limit."""
    limit = _tightest_limit(folder, files.limits, machine_total)
    if limit is None:
        return None
    try:
        used = int((folder / files.usage).read_text())
    except (OSError, ValueError):
        return None
    return limit - max(used - _reclaimable(folder, files.reclaimable), 0)


def _tightest_limit(folder: Path, names: tuple[str, ...], machine_total: Optional[int]) -> Optional[int]:
    """The lowest of a cgroup's limit files that limits anything: not "max", not cgroup
    v1's huge "no limit", not above the machine's memory; None where none does."""
    limits = [limit for name in names if (limit := _read_limit(folder / name)) is not None
              and limit < NO_LIMIT and (machine_total is None or limit <= machine_total)]
    return min(limits) if limits else None


def _read_limit(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _reclaimable(folder: Path, names: tuple[str, ...]) -> int:
    """The named reclaimable bytes of a cgroup's memory.stat; 0 where it cannot be read."""
    try:
        stat = dict(line.split()[:2] for line in (folder / "memory.stat").read_text().splitlines() if line.strip())
        return sum(int(stat.get(name, 0)) for name in names)
    except (OSError, ValueError):
        return 0


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def _check_file(path) -> None:
    """A file that is missing, unreadable or empty, said plainly (libsndfile reports a
    missing or unreadable file as "System error.")."""
    try:
        with open(path, "rb") as fh:
            empty = os.fstat(fh.fileno()).st_size == 0
    except FileNotFoundError as err:
        raise AudioReadError(path, "file not found") from err
    except PermissionError as err:
        raise AudioReadError(path, "permission denied (cannot read the file)") from err
    except IsADirectoryError as err:
        raise AudioDecodeError(path, "a folder, not an audio file") from err
    except OSError as err:
        raise AudioReadError(path, f"cannot read the file: {err.strerror or err}") from err
    if empty:
        raise AudioDecodeError(path, "empty file (0 bytes)")


# data sizes a streaming writer leaves (32 or 64 bits): no length to check
_UNKNOWN_LENGTH = (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


@dataclass
class _DataChunk:
    """What a header declares of its audio data, and what the file holds of it."""

    declared: int  # bytes of audio data the header declares
    held: int  # bytes the file holds from the data's start
    frames: int  # frames the header declares (bytes where the header gives no frame size)


def _check_complete(path) -> None:
    """A file cut off (an interrupted copy) that libsndfile would decode, without a word, as
    a shorter clip: it counts the frames a WAV, RF64, W64, AIFF or AU holds, not those its
    header declares, and an Ogg stream's length by its last whole page. Refused here instead,
    from the header's data size (Ogg: its last page). FLAC and CAF need nothing: libsndfile
    refuses them cut off. (MP3 is not checked: its header's length may be an estimate.)"""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(16)
            fh.seek(0)
            size = os.fstat(fh.fileno()).st_size
            if magic[:4] == b"OggS":
                reason = _ogg_cut_off(fh, size)  # what to do included: a recording can end so too
            else:
                data = _data_chunk(fh, magic, size)
                problem = None if data is None else _short_data(data)
                reason = problem and f"truncated: {problem}; copy the file again"
    except OSError:
        return  # unreadable: decoding reports it
    if reason:
        raise AudioDecodeError(path, reason)


def _data_chunk(fh, magic: bytes, size: int) -> Optional[_DataChunk]:
    """The data chunk of a WAV (RIFF, RF64, BW64), W64, AIFF/AIFC or AU file; None for other
    formats, a file without one (libsndfile judges those) or a streamed length."""
    if magic[:4] in (b"RIFF", b"RF64", b"BW64") and magic[8:12] == b"WAVE":
        found = _wave_data(fh, size)
    elif magic == _W64_RIFF:
        found = _w64_data(fh, size)
    elif magic[:4] == b"FORM" and magic[8:12] in (b"AIFF", b"AIFC"):
        found = _aiff_data(fh, size)
    elif magic[:4] == b".snd":
        found = _au_data(fh.read(24), size)
    else:
        return None
    if found is None or found.declared in _UNKNOWN_LENGTH:
        return None
    return found


def _short_data(data: _DataChunk) -> Optional[str]:
    if data.held >= data.declared:
        return None
    held = data.frames * data.held // data.declared
    return f"header says {data.frames} frames, file holds {held} (an interrupted copy?)"


def _chunks(fh, id_size: int, size_size: int, byteorder: str, size_has_header: bool, align: int):
    """(chunk id, body size) of each chunk from the file's position on; at each, the file is
    at the chunk's body, which the caller may read from."""
    header = id_size + size_size
    while True:
        head = fh.read(header)
        if len(head) < header:
            return
        body = int.from_bytes(head[id_size:], byteorder) - (header if size_has_header else 0)
        if body < 0:  # a damaged size: libsndfile judges the file
            return
        start = fh.tell()
        yield head[:id_size], body
        fh.seek(start + body + (-body % align))  # chunks are padded to `align` bytes


def _wave_data(fh, size: int) -> Optional[_DataChunk]:
    """RIFF/WAVE, and RF64/BW64 (files over 4 GB: the data's real size is in the ds64 chunk)."""
    fh.seek(12)
    block_align, ds64_data = 0, None
    for name, body in _chunks(fh, 4, 4, "little", False, 2):
        if name == b"ds64":
            ds64_data = int.from_bytes(fh.read(16)[8:16], "little")  # riff size, then data size (64 bits)
        elif name == b"fmt ":
            block_align = int.from_bytes(fh.read(16)[12:14], "little")
        elif name == b"data":
            declared = ds64_data if body == 0xFFFFFFFF and ds64_data is not None else body
            return _DataChunk(declared, size - fh.tell(), declared // max(block_align, 1))
    return None


# Sony Wave64: every id is a GUID; the first four bytes of each spell the RIFF name
_W64_RIFF = b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000")
_W64_TAIL = bytes.fromhex("f3acd3118cd100c04f8edb8a")


def _w64_data(fh, size: int) -> Optional[_DataChunk]:
    fh.seek(40)  # riff GUID, 64-bit size, wave GUID
    block_align = 0
    for name, body in _chunks(fh, 16, 8, "little", True, 8):  # sizes count the 24-byte chunk header
        if name == b"fmt " + _W64_TAIL:
            block_align = int.from_bytes(fh.read(16)[12:14], "little")
        elif name == b"data" + _W64_TAIL:
            return _DataChunk(body, size - fh.tell(), body // max(block_align, 1))
    return None


def _aiff_data(fh, size: int) -> Optional[_DataChunk]:
    """AIFF/AIFC: COMM declares the frames, SSND holds them after 8 bytes (offset, block size)."""
    fh.seek(12)
    frames = None
    for name, body in _chunks(fh, 4, 4, "big", False, 2):
        if name == b"COMM":
            frames = int.from_bytes(fh.read(6)[2:6], "big")  # channels (16 bits), frames (32 bits)
        elif name == b"SSND":
            declared = body - 8
            return _DataChunk(declared, size - fh.tell() - 8, declared if frames is None else frames)
    return None


# bytes per sample by encoding: mu-law, PCM 8, 16, 24, 32 bits, float, double, A-law
_AU_SAMPLE_BYTES = {1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 8, 27: 1}


def _au_data(head: bytes, size: int) -> Optional[_DataChunk]:
    """Sun/NeXT .au: data offset, data size, encoding, rate, channels (32 bits each, big-endian)."""
    if len(head) < 24:
        return None
    offset, declared, encoding, _, channels = (int.from_bytes(head[i:i + 4], "big") for i in range(4, 24, 4))
    width = _AU_SAMPLE_BYTES.get(encoding, 0) * channels
    return _DataChunk(declared, size - offset, declared // max(width, 1))


_OGG_PAGE_MAX = 27 + 255 + 255 * 255  # header, segment table, body: the longest Ogg page


def _ogg_cut_off(fh, size: int) -> Optional[str]:
    """Why an Ogg stream is refused, with what to do: its last page is cut off, or it lacks
    the end-of-stream mark a finished stream's last page carries (a copy interrupted at a
    page's end, but more often a recording or stream capture stopped without closing the
    file, which copying again cannot mend). Bytes after the last page (or a capture pattern
    found inside audio data) are not judged."""
    fh.seek(max(0, size - _OGG_PAGE_MAX))
    tail = fh.read()
    at = tail.rfind(b"OggS")
    if at < 0 or (len(tail) > at + 4 and tail[at + 4] != 0):  # no page, or not a page header (version 0)
        return None
    cut_off = "truncated: its last Ogg page is cut off (an interrupted copy?); copy the file again"
    header = tail[at:at + 27]
    if len(header) < 27:
        return cut_off
    table = tail[at + 27:at + 27 + header[26]]  # the page's segment sizes
    end = at + 27 + len(table) + sum(table)
    if len(table) < header[26] or end > len(tail):
        return cut_off
    if end == len(tail) and not header[5] & 0x04:
        return ("truncated or not closed properly (an interrupted copy or recording): its last Ogg page has no "
                "end-of-stream mark; copy the file again, or if the original is like this too, close it with a "
                "tool such as ffmpeg (ffmpeg -i FILE -c:a copy FIXED.ogg rewrites it without re-encoding)")
    return None


def _reason(path, err: Exception) -> str:
    """libsndfile's message, except where it misleads: for a file that exists but is not
    audio it reports "File does not exist" (seen with junk .mp3 files)."""
    text = _short(err)
    if "does not exist" in text and Path(path).is_file():
        return "format not recognised or file damaged (not audio libsndfile can read)"
    return text


def _short(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
