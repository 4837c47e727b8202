"""Uploaded media, recognised by their content: the file name and the client's content type are never trusted.

Each modality is one function, ``read(data, name, limits)``: what the encoder preprocesses when the
bytes are of its kind, ``None`` when they are not, an error when they are of its kind but unusable.
Supporting audio or video is one more such function and its entry in ``READERS``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..data import load_image
from ..data.audio import AudioTooLongError, Waveform, load_audio
from ..errors import BadInputError

# Formats Pillow decodes safely and that cameras, browsers and screenshots produce.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
AUDIO_FORMATS = ("WAV", "FLAC", "OGG", "MP3")


class UnsupportedMediaError(BadInputError):
    """Bytes of no accepted media type (HTTP 415)."""


class MediaTooLargeError(BadInputError):
    """An upload or a decoded image beyond the server's limits (HTTP 413)."""


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000  # a decoded RGB image of this size takes 120 MB
    max_audio_seconds: float = 600.0  # 10 MB of FLAC silence would otherwise decode to hours


@dataclass(frozen=True)
class Media:
    """A decoded upload: its modality and what the encoder preprocesses (a PIL image for "image")."""

    modality: str
    value: Any


@dataclass(frozen=True)
class MediaReader:
    modality: str
    formats: tuple[str, ...]  # named in the error that lists what is accepted
    read: Callable[[bytes, str, MediaLimits], Any | None]


def read_image(data: bytes, name: str, limits: MediaLimits) -> Image.Image | None:
    """An RGB image; the header is checked first, so a decompression bomb is refused before it is decoded."""
    try:
        header = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as error:
        raise MediaTooLargeError(f"{name}: image too large ({error})") from error
    pixels = header.width * header.height
    if pixels > limits.max_pixels:
        raise MediaTooLargeError(f"{name}: image of {header.width}x{header.height} pixels; "
                                 f"at most {limits.max_pixels:,} pixels are accepted")
    return load_image(io.BytesIO(data), name=name)


def is_audio(data: bytes) -> bool:
    """WAV, FLAC, Ogg or MP3 by their first bytes (an MP3 starts with an ID3 tag or a frame sync)."""
    return (data[:4] == b"RIFF" and data[8:12] == b"WAVE") or data[:4] in (b"fLaC", b"OggS") \
        or data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


def read_audio(data: bytes, name: str, limits: MediaLimits) -> Waveform | None:
    """Mono samples at the file's own rate (the encoder resamples); longer sounds than the limit are refused
    while decoding, before they take the memory."""
    if not is_audio(data):
        return None
    try:
        return load_audio(io.BytesIO(data), name=name, max_seconds=limits.max_audio_seconds)
    except AudioTooLongError as error:
        raise MediaTooLargeError(str(error)) from error


READERS = [MediaReader("image", IMAGE_FORMATS, read_image), MediaReader("audio", AUDIO_FORMATS, read_audio)]


def accepted_types() -> str:
    return "; ".join(f"{reader.modality}: {', '.join(reader.formats)}" for reader in READERS)


def read_media(data: bytes, name: str, limits: MediaLimits) -> Media:
    """The first reader that recognises the bytes decodes them."""
    if not data:
        raise BadInputError(f"{name}: empty file")
    if len(data) > limits.max_bytes:
        raise MediaTooLargeError(f"{name}: upload larger than {limits.max_bytes:,} bytes")
    for reader in READERS:
        value = reader.read(data, name, limits)
        if value is not None:
            return Media(reader.modality, value)
    raise UnsupportedMediaError(f"{name}: unsupported media type (accepted: {accepted_types()})")
