"""Frozen perception encoders, loaded by packaged name, local folder or hub id."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from transformers import AutoConfig

from ..media.video import DEFAULT_FRAMES
from ..safe_load import from_pretrained
from . import dinov2_onnx, efficientnet, whisper_ct2, yamnet
from .audio import AudioEncoder
from .base import Encoder
from .frames import PREFIX as FRAMES_PREFIX
from .frames import FrameEncoder
from .hf_audio import HFAudioEncoder, is_audio_config
from .hf_video import HFVideoEncoder
from .hf_vision import HFVisionEncoder

__all__ = ["PACKAGED", "PATCHLESS", "AudioEncoder", "Encoder", "FrameEncoder", "HFAudioEncoder", "HFVideoEncoder",
           "HFVisionEncoder", "load_encoder"]

# Packaged encoders: name -> loader(image_size, tokens); importing their modules registered them in the zoo.
PACKAGED: dict[str, Callable[[int | None, str], Encoder]] = {
    dinov2_onnx.NAME: dinov2_onnx.load,
    efficientnet.NAME: efficientnet.load,
    whisper_ct2.NAME: whisper_ct2.load,
    yamnet.NAME: yamnet.load,
}
PATCHLESS = (efficientnet.NAME,)  # packaged encoders that give pooled tokens only, no patch tokens

_HUB_ID = re.compile(r"\w[\w.-]*/[\w.-]+")


def _unknown(name_or_path: str) -> ValueError:
    return ValueError(f"unknown encoder '{name_or_path}': not a packaged encoder ({', '.join(PACKAGED)}), "
                      "not an existing folder and not a reachable hub model id")


def load_encoder(name_or_path: str, image_size: int | None = None, num_frames: int | None = None,
                 tokens: str = "cls") -> Encoder:
    """Packaged name first, then a local folder, then an 'owner/name' hub id; ``frames:NAME`` for video.

    ``frames:NAME`` reads a video as ``num_frames`` frames (8 by default) through the image encoder NAME.
    A transformers video model (one whose config has ``num_frames``: TimeSformer, VideoMAE, ViViT) reads
    videos by itself, and a transformers audio model (AST, Whisper, wav2vec2, HuBERT, ...) sound files.
    Anything else fails here instead of reaching the hub, so a typo never turns into a download attempt.
    ``image_size`` overrides the encoder's default resolution where the model allows it.
    ``tokens="patches"`` (transformers vision transformers) adds each block's patch tokens (see ``Encoder``).
    """
    if tokens != "cls" and name_or_path.startswith(FRAMES_PREFIX):
        raise ValueError(f"encoder '{name_or_path}': patch tokens come from image encoders only; "
                         "video encoders give one token per block (and frame)")
    if name_or_path.startswith(FRAMES_PREFIX):
        image_encoder = load_encoder(name_or_path.removeprefix(FRAMES_PREFIX), image_size)
        return FrameEncoder(image_encoder, num_frames or DEFAULT_FRAMES)
    if name_or_path in PACKAGED:
        encoder = PACKAGED[name_or_path](image_size, tokens)
    else:
        encoder = _transformers_encoder(name_or_path, image_size, num_frames, tokens)
    if num_frames is not None and encoder.modality != "video":
        hint = f" (use '{FRAMES_PREFIX}{name_or_path}' to read videos frame by frame)" \
            if encoder.modality == "image" else ""
        raise ValueError(f"num_frames applies to video encoders, not to the {encoder.modality} encoder "
                         f"'{name_or_path}'{hint}")
    return encoder


def _transformers_encoder(name_or_path: str, image_size: int | None, num_frames: int | None,
                          tokens: str) -> Encoder:
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        source, config = str(folder), from_pretrained(AutoConfig, folder, "encoder")
    elif _HUB_ID.fullmatch(name_or_path):
        try:
            source, config = name_or_path, from_pretrained(AutoConfig, name_or_path, "encoder")
        except OSError as err:
            raise _unknown(name_or_path) from err
    else:
        raise _unknown(name_or_path)
    if getattr(config, "num_frames", None):
        if tokens != "cls":
            raise ValueError(f"encoder '{name_or_path}': patch tokens come from image encoders only; "
                             "video encoders give one token per block")
        return HFVideoEncoder(source, num_frames=num_frames, image_size=image_size)
    if is_audio_config(config):
        if image_size is not None or tokens != "cls":
            raise ValueError(f"image_size and patch tokens do not apply to the audio encoder '{name_or_path}'")
        return HFAudioEncoder(source)
    return HFVisionEncoder(source, image_size=image_size, tokens=tokens)
