"""Uploaded media, recognised by their content: the file name and the client's content type are never trusted.

Each modality is one ``MediaReader``: a test of the first bytes (``recognises``) and a decoder (``read``).
Recognising comes first, so that an upload of the wrong kind for an adapter is refused before it is
decoded, and bytes that start like a PNG but do not decode are unreadable (400), not of an
unsupported type (415). Supporting another modality is one more reader in ``READERS``.

Decoders of hostile bytes raise exceptions of every kind (OSError, SyntaxError, EOFError, struct.error,
PyAV's errors, ...), and no list of them is complete: ``read_media`` answers all of them as the
client's error, one line naming the upload.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError
from ..media import load_image
from ..media.audio import AudioTooLongError, Waveform, load_audio
from ..media.ffmpeg import open_container
from ..media.video import DEFAULT_FRAMES, FramesTooLargeError, load_video

# Formats Pillow decodes safely and that cameras, browsers and screenshots produce.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
AUDIO_FORMATS = ("WAV", "FLAC", "OGG", "MP3")
VIDEO_FORMATS = ("MP4", "MOV", "WEBM", "MKV", "AVI")


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
    """A decoded upload: its modality and what the encoder preprocesses (a PIL image for "image", the
    sampled frames for "video")."""

    modality: str
    value: Any


@dataclass(frozen=True)
class MediaReader:
    modality: str
    formats: tuple[str, ...]  # named in the error that lists what is accepted
    recognises: Callable[[bytes], bool]  # from the first bytes alone
    read: Callable[[bytes, str, MediaLimits, int], Any]  # (data, name, limits, frames a video adapter samples)


def image_format(data: bytes) -> str | None:
    """The accepted image format whose signature starts the bytes, by each Pillow plugin's own test."""
    Image.init()
    return next((fmt for fmt in IMAGE_FORMATS if Image.OPEN[fmt][1](data[:16])), None)


def read_image(data: bytes, name: str, limits: MediaLimits, num_frames: int = 0) -> Image.Image:
    """An RGB image; the header is checked first, so a decompression bomb is refused before it is decoded."""
    fmt = image_format(data)
    try:
        header = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as error:
        # A header declaring more pixels than Pillow's own ceiling: a malformed file, not a large photo.
        raise BadInputError(f"{name}: {fmt} image refused as a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise BadInputError(f"{name}: unreadable {fmt} image (its header does not decode)") from error
    pixels = header.width * header.height
    if pixels > limits.max_pixels:
        raise MediaTooLargeError(f"{name}: image of {header.width}x{header.height} pixels; "
                                 f"at most {limits.max_pixels:,} pixels are accepted")
    return load_image(io.BytesIO(data), name=name)


def is_audio(data: bytes) -> bool:
    """WAV, FLAC, Ogg or MP3 by their first bytes (an MP3 starts with an ID3 tag or a frame sync)."""
    return (data[:4] == b"RIFF" and data[8:12] == b"WAVE") or data[:4] in (b"fLaC", b"OggS") \
        or data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


def read_audio(data: bytes, name: str, limits: MediaLimits, num_frames: int = 0) -> Waveform:
    """Mono samples at the file's own rate (the encoder resamples); longer sounds than the limit are refused
    while decoding, before they take the memory."""
    try:
        return load_audio(io.BytesIO(data), name=name, max_seconds=limits.max_audio_seconds)
    except AudioTooLongError as error:
        raise MediaTooLargeError(str(error)) from error


def is_video(data: bytes) -> bool:
    """MP4 and MOV (an ISO media file opens with its 'ftyp' box), WebM and MKV (an EBML header), AVI (RIFF)."""
    return data[4:8] == b"ftyp" or data[:4] == b"\x1a\x45\xdf\xa3" or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")


def read_video(data: bytes, name: str, limits: MediaLimits, num_frames: int = DEFAULT_FRAMES) -> list[Image.Image]:
    """The frames the adapter's encoder samples, as for a file; frames over the pixel limit are refused
    from the stream's header."""
    try:
        return load_video(data, num_frames, name=name, max_pixels=limits.max_pixels)
    except FramesTooLargeError as error:
        raise MediaTooLargeError(str(error)) from error


READERS = [MediaReader("image", IMAGE_FORMATS, lambda data: image_format(data) is not None, read_image),
           MediaReader("audio", AUDIO_FORMATS, is_audio, read_audio),
           MediaReader("video", VIDEO_FORMATS, is_video, read_video)]


def accepted_types() -> str:
    return "; ".join(f"{reader.modality}: {', '.join(reader.formats)}" for reader in READERS)


def media_modality(data: bytes, name: str, limits: MediaLimits) -> str:
    """What the bytes are (image, audio or video), from their first bytes, within the upload limit."""
    return _reader(data, name, limits).modality


def _reader(data: bytes, name: str, limits: MediaLimits) -> MediaReader:
    if not data:
        raise BadInputError(f"{name}: empty file")
    if len(data) > limits.max_bytes:
        raise MediaTooLargeError(f"{name}: upload larger than {limits.max_bytes:,} bytes")
    for reader in READERS:
        if reader.recognises(data):
            return reader
    raise UnsupportedMediaError(f"{name}: unsupported media type (accepted: {accepted_types()})")


def read_media(data: bytes, name: str, limits: MediaLimits, num_frames: int = DEFAULT_FRAMES) -> Media:
    """The upload decoded by the reader that recognises it; whatever its decoder raises is a BadInputError.

    ``num_frames``: how many frames a video is sampled to (the video adapter's encoder's count).
    """
    reader = _reader(data, name, limits)
    try:
        value = reader.read(data, name, limits, num_frames)
    except BadInputError:
        raise
    except Exception as error:  # any decoder failure on the client's bytes (see the module's docstring)
        raise BadInputError(f"{name}: unreadable {reader.modality} ({type(error).__name__}: {error})") from error
    return Media(reader.modality, value)


def has_sound_track(data: bytes, name: str) -> bool:
    """Whether a video's container holds an audio stream (from its header; nothing is decoded)."""
    with open_container(io.BytesIO(data), name, "video") as container:
        return bool(container.streams.audio)


def read_senses(data: bytes, name: str, limits: MediaLimits, senses: Sequence[tuple[str, str, int]],
                model: str) -> tuple[Any, ...]:
    """One upload decoded for each sense of a composed model ``model``: (sense name, its modality, the frames a
    video sense samples) in sense order.

    A sense of the upload's own modality reads it as a single adapter would; from a video, an audio sense
    reads its sound track (a video without one is refused, naming the sense that needs it) and an image
    sense its middle frame. Each distinct reading is decoded once.
    """
    reader = _reader(data, name, limits)
    decoded: dict[tuple[str, int], Any] = {}
    try:
        if reader.modality == "video":
            deaf = next((sense for sense, modality, _ in senses if modality == "audio"), None)
            if deaf is not None and not has_sound_track(data, name):
                raise BadInputError(f"{name}: a video without a sound track; composed model '{model}' needs the "
                                    f"sound track for its audio sense '{deaf}'")
        for sense, modality, frames in senses:
            key = (modality, frames if modality == "video" else 0)
            if key in decoded:
                continue
            if modality == reader.modality:
                decoded[key] = reader.read(data, name, limits, frames)
            elif reader.modality == "video" and modality == "audio":
                decoded[key] = read_audio(data, name, limits)
            elif reader.modality == "video" and modality == "image":
                decoded[key] = read_video(data, name, limits, 1)[0]  # the middle frame
            else:
                raise UnsupportedMediaError(f"{name}: {reader.modality} upload, but sense '{sense}' of composed "
                                            f"model '{model}' reads {modality}")
    except BadInputError:
        raise
    except Exception as error:  # any decoder failure on the client's bytes (see the module's docstring)
        raise BadInputError(f"{name}: unreadable {reader.modality} ({type(error).__name__}: {error})") from error
    return tuple(decoded[(modality, frames if modality == "video" else 0)] for _, modality, frames in senses)
