"""Any transformers vision transformer (ViT, DINOv2, CLIP/SigLIP vision towers) as a frozen encoder."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoModel, PretrainedConfig
from transformers.utils import cached_file

from ..safe_load import from_pretrained
from .base import TOKENS, Encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_batch(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB images squashed to size x size (bicubic) as one uint8 tensor [B, 3, S, S].

    Squashing rather than cropping keeps the whole picture: a question may be about any corner.
    """
    arrays = [np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _edge(size: int | dict) -> int:
    """Preprocessor configs write a size as an int, {height, width} or {shortest_edge}."""
    if isinstance(size, dict):
        return int(size.get("height") or size["shortest_edge"])
    return int(size)


def _preprocessing(source: str, config: PretrainedConfig) -> tuple[int, tuple, tuple]:
    """(size, mean, std) the weights were trained with; ImageNet statistics when the folder says nothing."""
    path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    spec = json.loads(Path(path).read_text()) if path else {}
    size = spec.get("crop_size") or spec.get("size") or config.image_size
    mean, std = spec.get("image_mean", IMAGENET_MEAN), spec.get("image_std", IMAGENET_STD)
    return _edge(size), tuple(mean), tuple(std)


def _vision_tower(model: nn.Module) -> nn.Module:
    """The image half of a text+image model (CLIP, SigLIP); the model itself otherwise."""
    return getattr(model, "vision_model", model)


def _has_cls_token(model: nn.Module) -> bool:
    """ViT/DINOv2 call it cls_token, CLIP class_embedding; SigLIP has none and is mean-pooled instead."""
    embeddings = getattr(model, "embeddings", None)
    return any(hasattr(embeddings, attr) for attr in ("cls_token", "class_embedding"))


def block_tokens(hidden_states: tuple[torch.Tensor, ...], uses_cls: bool) -> torch.Tensor:
    """[batch, blocks, dim]: each block's [CLS] output, or its mean over positions; [0] is the embeddings."""
    return torch.stack([h[:, 0] if uses_cls else h.mean(dim=1) for h in hidden_states[1:]], dim=1)


def block_patches(hidden_states: tuple[torch.Tensor, ...], uses_cls: bool, patches: int) -> torch.Tensor:
    """[batch, blocks, 1 + patches, dim]: each block's summary token (as ``block_tokens``), then its patch tokens.

    Patch tokens are the last ``patches`` positions: register tokens, where a model has them, sit between
    the [CLS] token and the patches.
    """
    summary = block_tokens(hidden_states, uses_cls)
    grid = torch.stack([h[:, -patches:] for h in hidden_states[1:]], dim=1)
    return torch.cat([summary[:, :, None], grid], dim=2)


def config_hash(config: PretrainedConfig) -> str:
    """Short hash of the architecture, blind to the transformers version that wrote it."""
    spec = config.to_dict()
    spec.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


class HFVisionEncoder(Encoder):
    """One token per transformer block: its [CLS] output, or the mean over positions without a [CLS].

    With ``tokens="patches"`` each block also gives its patch tokens, (image size / patch size)^2 of them.
    """

    def __init__(self, name_or_path: str | Path, image_size: int | None = None, name: str | None = None,
                 tokens: str = "cls"):
        super().__init__()
        if tokens not in TOKENS:
            raise ValueError(f"unknown encoder tokens '{tokens}'; available: {', '.join(TOKENS)}")
        source = str(name_or_path)
        self.model = _vision_tower(from_pretrained(AutoModel, source, "encoder", dtype=torch.float32))
        config = self.model.config
        default_size, self.mean, self.std = _preprocessing(source, config)
        self.name = name or source
        self.image_size = image_size or default_size
        self.num_blocks = config.num_hidden_layers
        self.dim = config.hidden_size
        self.uses_cls = _has_cls_token(self.model)
        self.tokens = tokens
        if tokens == "patches":
            side = self.image_size // config.patch_size
            self.patch_grid = (side, side)
        self._config_hash = config_hash(config)
        # Models that only interpolate on request must be asked, or other sizes than the native one fail.
        accepts = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        self._forward_kwargs = {"interpolate_pos_encoding": True} if accepts else {}
        self.freeze()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = resize_batch(images, self.image_size).float() / 255
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixels.to(self.model.dtype), output_hidden_states=True,
                            **self._forward_kwargs)
        if self.patch_grid is None:
            return block_tokens(output.hidden_states, self.uses_cls)
        return block_patches(output.hidden_states, self.uses_cls, self.patch_grid[0] * self.patch_grid[1])

    def fingerprint(self) -> str:
        mean = ",".join(f"{m:g}" for m in self.mean)
        std = ",".join(f"{s:g}" for s in self.std)
        # [CLS] features keep the fingerprint they always had, so existing feature caches stay valid.
        tokens = ":tokens=patches" if self.tokens == "patches" else ""
        return (f"hf-vision:{self.name}:config-{self._config_hash}:{self.image_size}px-bicubic"
                f":mean={mean}:std={std}{tokens}")
