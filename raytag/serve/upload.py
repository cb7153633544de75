"""Reading and checking one upload to `POST /tag`, before any model sees it.

Every way an upload can be unusable raises `UploadError(status, reason)`; the server turns
it into `{"error": reason}` with that HTTP status and keeps serving. Kept free of Ray so
that it can be tested alone.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import AsyncIterator, Optional

import numpy as np
import soundfile as sf

from raytag.data.audio import samples_over_cap
from raytag.predict import AUDIO_EXTENSIONS

MAX_SECONDS = 1800.0  # `raytag serve --max-seconds`: uploads longer than this get 413

MULTIPART_SLACK = 64 * 1024  # multipart boundaries and headers around the file itself

# `raytag predict` decodes a clip whole (all channels, float32), so what an upload decodes to
# is capped, not only its length: a few MB of FLAC can hold 8 channels at 192 kHz, gigabytes
# once decoded. Frames x channels may be at most --max-seconds of 48 kHz mono (345 MB at 1800 s).
DECODED_SAMPLES_PER_SECOND = 48_000
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8


class UploadError(Exception):
    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason
        super().__init__(f"{status}: {reason}")


@dataclass
class Clip:
    fname: str
    data: bytes
    duration: float  # seconds, from the decoded samples


async def read_capped(stream: AsyncIterator[bytes], limit: int, content_length: Optional[str]) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (a client may
    send no Content-Length, or a false one: the count is of what actually arrives)."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(400, f"bad Content-Length header {content_length!r}") from None
        if declared > limit:
            raise UploadError(413, f"upload of {declared} bytes is over the limit of {_mb(limit)}")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"upload is over the limit of {_mb(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)


def clean_fname(name: Optional[str], default: str = "upload") -> str:
    """The base name a client gave (never a path: it only labels the answer)."""
    base = PurePosixPath(str(name or "").replace("\\", "/")).name.strip()
    return base[:200] or default


def check_audio(fname: str, data: bytes, limit: int, max_seconds: float = MAX_SECONDS) -> Clip:
    """Check an upload before it is scored: not empty, decodable, has samples, a usual sample
    rate and channel count, at most `max_seconds` long and at most `decoded_sample_cap` samples
    (all channels), all finite. It is read block by block: a compressed file of a few MB can
    hold hours of audio, gigabytes once decoded, so its size is checked from the header and
    again as it is read, before anything is held whole. `raytag predict` decodes the file again
    by its own path (the one code path that scores)."""
    if not data:
        raise UploadError(400, "empty upload: send an audio file as the request body or as the multipart field 'file'")
    if len(data) > limit:
        raise UploadError(413, f"upload of {len(data)} bytes is over the limit of {_mb(limit)}")
    frames = bad = 0
    try:
        info = sf.info(io.BytesIO(data))
        rate = info.samplerate
        if rate > 0:
            check_rate_and_channels(fname, rate, info.channels)
            cap = decoded_sample_cap(max_seconds)
            check_decoded_size(fname, info.frames, info.channels, cap)
            longest = int(max_seconds * rate)
            for block in sf.blocks(io.BytesIO(data), blocksize=1 << 16, dtype="float32", always_2d=True):
                frames += block.shape[0]
                bad += int((~np.isfinite(block)).sum())
                if frames > longest:
                    raise UploadError(413, f"{fname}: longer than this server's limit of {max_seconds:g} s "
                                           "(--max-seconds); tag long recordings with `raytag predict`")
                check_decoded_size(fname, frames, block.shape[1], cap)  # a header may understate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise UploadError(415, f"{fname}: cannot decode as audio ({decode_reason(err)}); send wav, flac or ogg") from None
    if frames == 0 or rate <= 0:
        raise UploadError(422, f"{fname}: empty audio (0 samples)")
    if bad:
        raise UploadError(422, f"{fname}: {bad} samples are not finite (NaN or inf)")
    return Clip(fname=fname, data=data, duration=frames / float(rate))


def decode_reason(err: Exception) -> str:
    """libsndfile's reason, without its "Error opening <_io.BytesIO object at 0x...>: "
    prefix (the in-memory file object means nothing to a client)."""
    reason = (str(err).strip() or type(err).__name__).splitlines()[0]
    return re.sub(r"^Error opening <[^>]*>:\s*", "", reason) or type(err).__name__


def is_multipart(content_type: str) -> bool:
    """A media type's name is case-insensitive (RFC 9110): "Multipart/Form-Data" is multipart."""
    return content_type.strip().lower().startswith("multipart/form-data")


def decoded_sample_cap(max_seconds: float) -> int:
    """The most samples (frames x channels) an upload may decode to."""
    return int(max_seconds * DECODED_SAMPLES_PER_SECOND)


def check_rate_and_channels(fname: str, rate: int, channels: int) -> None:
    if rate > MAX_SAMPLE_RATE:
        raise UploadError(422, f"{fname}: sample rate {rate} Hz is over this server's limit of "
                               f"{MAX_SAMPLE_RATE} Hz; resample it (48 kHz or less is plenty for tagging)")
    if channels > MAX_CHANNELS:
        raise UploadError(422, f"{fname}: {channels} channels is over this server's limit of {MAX_CHANNELS}; "
                               "mix it down to mono or stereo")


def check_decoded_size(fname: str, frames: int, channels: int, cap: int) -> None:
    """413 when `frames` x `channels` samples are over `cap` (a compressed upload may be small
    and still decode to gigabytes)."""
    over = samples_over_cap(frames, channels, cap)
    if over:
        raise UploadError(413, f"{fname}: decodes to {over}, over this server's limit of {cap} (--max-seconds "
                               "of 48 kHz mono); send it shorter, mono or at a lower rate, or tag it with "
                               "`raytag predict`")


def parse_top(value: Optional[str], n_classes: int) -> int:
    if value is None or value == "":
        return n_classes
    try:
        top = int(value)
    except ValueError:
        raise UploadError(400, f"top={value!r}: give a whole number of tags (1 to {n_classes})") from None
    if top < 1:
        raise UploadError(400, f"top={top}: must be at least 1")
    return min(top, n_classes)


def audio_suffix(fname: str) -> str:
    """The upload's extension when it is an audio one (libsndfile reads the format from the
    header; the extension only helps), else none."""
    suffix = PurePosixPath(fname).suffix.lower()
    return suffix if suffix in AUDIO_EXTENSIONS else ""


def page_html() -> str:
    """The page served at GET /."""
    from importlib import resources

    return resources.files("raytag.serve").joinpath("page.html").read_text(encoding="utf-8")


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"
