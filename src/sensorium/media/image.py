"""Image decoding: any file Pillow reads, turned upright as viewers show it."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInputError
from ..files import MAX_MEDIA_BYTES, regular_file


def load_image(path: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """An upright RGB image from a file or an open binary stream, or a BadInputError naming it and why it
    cannot be read.

    Upright as viewers show it: cameras store a portrait photo as landscape pixels plus an EXIF orientation,
    and the encoder must see what a person sees (video frames are turned upright the same way, see video.py).
    ``name`` names a stream (an upload) in the error; a path names itself.
    """
    name = name or str(path)
    if isinstance(path, (str, Path)):
        regular_file(path, MAX_MEDIA_BYTES)
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except FileNotFoundError as error:
        raise BadInputError(f"{name}: file not found") from error
    except UnidentifiedImageError as error:
        raise BadInputError(f"{name}: not an image file (unrecognised format)") from error
    except Image.DecompressionBombError as error:
        raise BadInputError(f"{name}: image too large to decode ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInputError(f"{name}: unreadable image ({error})") from error
