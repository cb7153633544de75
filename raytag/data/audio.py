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
    _check_wav_complete(path)
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
    path: str | Path, sample_rate: Optional[int], min_samples: int = 1
) -> np.ndarray:
    """Decode `path` to a mono float32 waveform at `sample_rate` (None: keep the file's rate).

    Channels are averaged. Resampling uses soxr (high quality). Raises AudioDecodeError
    when the file is empty or cannot be decoded, holds no samples, holds any NaN or inf
    sample (never silently zeroed), is digital silence (every sample 0), or is shorter
    than `min_samples` after resampling (pass `min_samples(features)`: one frame).
    """
    _check_file(path)
    _check_wav_complete(path)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
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


_WAV_UNKNOWN_LENGTH = (0, 0xFFFFFFFF)  # data sizes a streaming writer leaves: no length to check


def _check_wav_complete(path) -> None:
    """A WAV whose data chunk holds fewer bytes on disk than its header says was cut off
    (an interrupted copy): libsndfile would decode what is there as a shorter clip."""
    try:
        with open(path, "rb") as fh:
            found = _wav_data_chunk(fh)
            if found is None:
                return
            declared, block_align = found
            held = os.fstat(fh.fileno()).st_size - fh.tell()
    except OSError:
        return  # unreadable: decoding reports it
    if declared in _WAV_UNKNOWN_LENGTH or held >= declared:
        return
    unit = max(block_align, 1)
    raise AudioDecodeError(
        path, f"truncated: header says {declared // unit} frames, file holds {held // unit} "
              "(an interrupted copy?); copy the file again")


def _wav_data_chunk(fh) -> Optional[tuple[int, int]]:
    """(data chunk size in bytes, block align) of a RIFF/WAVE file, the file positioned at
    the data; None for other files or a WAV without a data chunk (libsndfile judges those)."""
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align = 0
    while True:
        chunk = fh.read(8)
        if len(chunk) < 8:
            return None
        name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if name == b"data":
            return size, block_align
        padded = size + (size & 1)  # chunks are padded to an even size
        if name == b"fmt ":
            body = fh.read(padded)
            block_align = int.from_bytes(body[12:14], "little") if len(body) >= 14 else 0
        else:
            fh.seek(padded, os.SEEK_CUR)


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
