"""Decode one audio file (wav, flac, ogg: whatever libsndfile reads) to mono float32
at a chosen sample rate, or read only its header.

Every way a file can be unusable raises `AudioDecodeError(path, reason)` so the caller
can leave that one clip out, name it and carry on.
"""
from __future__ import annotations

import logging
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


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration_s, sample_rate, channels) from the file header only (no decoding).

    A file with a valid header and no samples returns duration 0.0; the caller decides
    what is too short.
    """
    try:
        info = sf.info(str(path))
    except _DECODE_ERRORS as err:
        raise AudioDecodeError(path, f"unreadable audio header: {_short(err)}") from err
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
    when the file cannot be decoded, holds no samples, holds only non-finite samples, or
    is shorter than `min_samples` after resampling (pass one analysis frame, e.g. n_fft).
    A few non-finite samples among finite ones are set to 0 with a warning naming the file.
    """
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except _DECODE_ERRORS as err:
        raise AudioDecodeError(path, f"cannot decode: {_short(err)}") from err
    if data.shape[0] == 0:
        raise AudioDecodeError(path, "empty audio (0 samples)")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    finite = np.isfinite(wave)
    if not finite.any():
        raise AudioDecodeError(path, "no finite samples (all NaN or inf)")
    if not finite.all():
        bad = int((~finite).sum())
        log.warning("%s: %d of %d samples are NaN/inf; set to 0", path, bad, wave.size)
        wave = np.where(finite, wave, 0.0).astype(np.float32)
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


def _short(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
