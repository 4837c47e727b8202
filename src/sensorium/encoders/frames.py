"""Video through any image encoder: frames sampled over the clip, each encoded on its own.

No video model ships in a package, while good image encoders do; eP-ALM's video results come from a
video transformer, but a frame-wise image encoder plus a temporal aggregation in the model is the
common, cheaper alternative. The per-frame tokens are kept in time order; the adapter decides whether
to average them (``temporal: mean``), to give the LM one token per frame (``temporal: frames``), or the
mean and the change from first to last frame (``temporal: change``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..media.video import DEFAULT_FRAMES, load_video
from .base import Encoder

PREFIX = "frames:"


class FrameEncoder(Encoder):
    """Wraps an image encoder: ``forward`` takes [batch, frames, 3, H, W], gives [batch, blocks, frames, dim]."""

    modality = "video"

    def __init__(self, image_encoder: Encoder, num_frames: int = DEFAULT_FRAMES) -> None:
        super().__init__()
        if image_encoder.modality != "image":
            raise ValueError(f"'{PREFIX}' needs an image encoder, not the {image_encoder.modality} encoder "
                             f"'{image_encoder.name}'")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        self.image_encoder = image_encoder
        self.name = PREFIX + image_encoder.name
        self.num_blocks, self.dim = image_encoder.num_blocks, image_encoder.dim
        self.num_tokens = num_frames
        self.freeze()

    def final_norm(self) -> nn.Module:
        return self.image_encoder.final_norm()

    @property
    def num_frames(self) -> int:
        """Frames sampled per clip: one token each (the name video models use for the same count)."""
        return self.num_tokens

    def load(self, path: str | Path) -> list[Image.Image]:
        return load_video(path, self.num_tokens)

    def preprocess(self, media: list[list[Image.Image]]) -> torch.Tensor:
        pixels = self.image_encoder.preprocess([frame for frames in media for frame in frames])
        return pixels.view(len(media), self.num_tokens, *pixels.shape[1:])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.image_encoder(pixels.flatten(0, 1))  # [batch * frames, blocks, dim]
        return tokens.view(pixels.shape[0], self.num_tokens, *tokens.shape[1:]).transpose(1, 2)

    def fingerprint(self) -> str:
        return f"{PREFIX}{self.num_tokens}-uniform-pts-centres:{self.image_encoder.fingerprint()}"
