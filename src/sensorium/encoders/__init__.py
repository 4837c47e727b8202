"""Frozen perception encoders, loaded by packaged name, local folder or hub id."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from . import dinov2_onnx, efficientnet
from .base import Encoder
from .hf_vision import HFVisionEncoder

__all__ = ["PACKAGED", "Encoder", "HFVisionEncoder", "load_encoder"]

# Packaged image encoders: name -> loader(image_size); importing their modules registered them in the zoo.
PACKAGED: dict[str, Callable[[int | None], Encoder]] = {
    dinov2_onnx.NAME: dinov2_onnx.load,
    efficientnet.NAME: efficientnet.load,
}

_HUB_ID = re.compile(r"\w[\w.-]*/[\w.-]+")


def _unknown(name_or_path: str) -> ValueError:
    return ValueError(f"unknown encoder '{name_or_path}': not a packaged encoder ({', '.join(PACKAGED)}), "
                      "not an existing folder and not a reachable hub model id")


def load_encoder(name_or_path: str, image_size: int | None = None) -> Encoder:
    """Packaged name first, then a local folder, then an 'owner/name' hub id.

    Anything else fails here instead of reaching the hub, so a typo never turns into a download
    attempt. ``image_size`` overrides the encoder's default resolution where the model allows it.
    """
    if name_or_path in PACKAGED:
        return PACKAGED[name_or_path](image_size)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return HFVisionEncoder(folder, image_size=image_size)
    if not _HUB_ID.fullmatch(name_or_path):
        raise _unknown(name_or_path)
    try:
        return HFVisionEncoder(name_or_path, image_size=image_size)
    except OSError as err:
        raise _unknown(name_or_path) from err
