"""Any transformers video transformer (TimeSformer, VideoMAE, ViViT) as a frozen encoder.

eP-ALM's video results use TimeSformer's [CLS] token of each block. These models mix space and time
inside every block, so each block gives one token for the whole clip, read like an image model's:
the [CLS] output, or the mean over all space-time positions where there is none (VideoMAE).
Preprocessing is the model's own image processor, applied to the sampled frames.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from ..media.video import load_video
from ..safe_load import from_pretrained
from .base import Encoder
from .hf_vision import _has_cls_token, block_tokens, config_hash


class HFVideoEncoder(Encoder):
    """``forward`` takes [batch, frames, 3, H, W] and gives one token per block, [batch, blocks, dim]."""

    modality = "video"

    def __init__(self, name_or_path: str | Path, num_frames: int | None = None, image_size: int | None = None,
                 name: str | None = None) -> None:
        super().__init__()
        source = str(name_or_path)
        self.model = from_pretrained(AutoModel, source, "encoder", dtype=torch.float32)
        config = self.model.config
        # Position (and for most, time) embeddings are learned for one clip length and frame size.
        if num_frames not in (None, config.num_frames):
            raise ValueError(f"{source} was built for {config.num_frames} frames, not {num_frames}")
        if image_size not in (None, config.image_size):
            raise ValueError(f"{source} was built for {config.image_size} px frames, not {image_size}")
        try:
            self.processor = from_pretrained(AutoImageProcessor, source, "encoder")
        except OSError as error:
            raise ValueError(f"{source}: no preprocessor_config.json; a video model is read with its own image "
                             "processor, saved beside its weights") from error
        self.name = name or source
        self.num_frames = config.num_frames
        self.num_blocks = config.num_hidden_layers
        self.dim = config.hidden_size
        self.uses_cls = _has_cls_token(self.model)
        self._config_hash = config_hash(config)
        self.freeze()

    def load(self, path: str | Path) -> list[Image.Image]:
        return load_video(path, self.num_frames)

    def preprocess(self, media: list[list[Image.Image]]) -> torch.Tensor:
        return self.processor(media, return_tensors="pt").pixel_values

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixels.to(self.model.dtype), output_hidden_states=True)
        return block_tokens(output.hidden_states, self.uses_cls)

    def fingerprint(self) -> str:
        processing = json.dumps(self.processor.to_dict(), sort_keys=True, default=str)
        processing_hash = hashlib.sha256(processing.encode()).hexdigest()[:12]
        return (f"hf-video:{self.name}:config-{self._config_hash}:{self.num_frames}-uniform-pts-centres"
                f":processor-{processing_hash}")
