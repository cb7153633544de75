"""Reading and checking one upload to `POST /tag`, before any model sees it.

Every way an upload can be unusable raises `UploadError(status, reason)`; the server turns
it into `{"error": reason}` with that HTTP status and keeps serving. Kept free of Ray so
that it can be tested alone.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import AsyncIterator, Optional

import numpy as np
import soundfile as sf

from raytag.predict import AUDIO_EXTENSIONS

MAX_SECONDS = 1800.0  # `raytag serve --max-seconds`: uploads longer than this get 413

MULTIPART_SLACK = 64 * 1024  # multipart boundaries and headers around the file itself


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
    """Check an upload before it is scored: not empty, decodable, has samples, at most
    `max_seconds` long, all finite. It is read block by block: a compressed file of a
    few MB can hold hours of audio, gigabytes once decoded, so its length is checked
    before anything is held whole. `raytag predict` decodes the file again by its own path
    (the one code path that scores)."""
    if not data:
        raise UploadError(400, "empty upload: send an audio file as the request body or as the multipart field 'file'")
    if len(data) > limit:
        raise UploadError(413, f"upload of {len(data)} bytes is over the limit of {_mb(limit)}")
    frames = bad = 0
    try:
        rate = sf.info(io.BytesIO(data)).samplerate
        if rate > 0:
            longest = int(max_seconds * rate)
            for block in sf.blocks(io.BytesIO(data), blocksize=1 << 16, dtype="float32", always_2d=True):
                frames += block.shape[0]
                bad += int((~np.isfinite(block)).sum())
                if frames > longest:
                    raise UploadError(413, f"{fname}: longer than this server's limit of {max_seconds:g} s "
                                           "(--max-seconds); tag long recordings with `raytag predict`")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        reason = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise UploadError(415, f"{fname}: cannot decode as audio ({reason}); send wav, flac or ogg") from None
    if frames == 0 or rate <= 0:
        raise UploadError(422, f"{fname}: empty audio (0 samples)")
    if bad:
        raise UploadError(422, f"{fname}: {bad} samples are not finite (NaN or inf)")
    return Clip(fname=fname, data=data, duration=frames / float(rate))


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
