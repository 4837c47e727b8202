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
from ..errors import BadInputError

# Formats Pillow decodes safely and that cameras, browsers and screenshots produce.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class UnsupportedMediaError(BadInputError):
    """Bytes of no accepted media type (HTTP 415)."""


class MediaTooLargeError(BadInputError):
    """An upload or a decoded image beyond the server's limits (HTTP 413)."""


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000  # a decoded RGB image of this size takes 120 MB


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


READERS = [MediaReader("image", IMAGE_FORMATS, read_image)]


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
