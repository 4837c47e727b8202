"""Frozen perception encoders, loaded by packaged name, local folder or hub id."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from .. import zoo
from ..media.video import DEFAULT_FRAMES
from ..safe_load import from_pretrained
from .audio import AudioEncoder
from .base import Encoder
from .frames import PREFIX as FRAMES_PREFIX
from .frames import FrameEncoder
from .hf_audio import HFAudioEncoder, is_audio_config
from .hf_video import HFVideoEncoder
from .hf_vision import HFVisionEncoder

__all__ = ["AudioEncoder", "Encoder", "FrameEncoder", "HFAudioEncoder", "HFVideoEncoder",
           "HFVisionEncoder", "load_encoder", "modality_of"]


def _unknown(name_or_path: str) -> ValueError:
    return ValueError(f"unknown encoder '{name_or_path}': not a packaged encoder "
                      f"({', '.join(zoo.packaged_names('encoder'))}), "
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
    origin = zoo.locate(name_or_path, "encoder")
    if origin == "packaged":
        encoder = zoo.REGISTRY[name_or_path].load(zoo.resolve(name_or_path), image_size, tokens)
    else:
        encoder = _transformers_encoder(name_or_path, origin, image_size, num_frames, tokens)
    if num_frames is not None and encoder.modality != "video":
        hint = f" (use '{FRAMES_PREFIX}{name_or_path}' to read videos frame by frame)" \
            if encoder.modality == "image" else ""
        raise ValueError(f"num_frames applies to video encoders, not to the {encoder.modality} encoder "
                         f"'{name_or_path}'{hint}")
    return encoder


def modality_of(config: PretrainedConfig) -> str:
    """What a transformers model reads: videos (its config has ``num_frames``), sounds, or images."""
    if getattr(config, "num_frames", None):
        return "video"
    return "audio" if is_audio_config(config) else "image"


def _transformers_encoder(name_or_path: str, origin: str | None, image_size: int | None, num_frames: int | None,
                          tokens: str) -> Encoder:
    """A transformers model from a local folder or the hub (``origin``, see ``zoo.locate``)."""
    folder = Path(name_or_path).expanduser()
    if origin == "local" and folder.is_dir():
        source, config = str(folder), from_pretrained(AutoConfig, folder, "encoder")
    elif origin == "hub":
        try:
            source, config = name_or_path, from_pretrained(AutoConfig, name_or_path, "encoder")
        except OSError as err:
            raise _unknown(name_or_path) from err
    else:
        raise _unknown(name_or_path)
    modality = modality_of(config)
    if modality == "video":
        if tokens != "cls":
            raise ValueError(f"encoder '{name_or_path}': patch tokens come from image encoders only; "
                             "video encoders give one token per block")
        return HFVideoEncoder(source, num_frames=num_frames, image_size=image_size)
    if modality == "audio":
        if image_size is not None or tokens != "cls":
            raise ValueError(f"image_size and patch tokens do not apply to the audio encoder '{name_or_path}'")
        return HFAudioEncoder(source)
    return HFVisionEncoder(source, image_size=image_size, tokens=tokens)
