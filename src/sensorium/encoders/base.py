"""The one interface every frozen perception encoder implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature

from ..media import load_image

# What an encoder gives per block: one summary token, or that token followed by every patch token.
TOKENS = ("cls", "patches")
# Where transformers models keep the LayerNorm after their last block: ViT, DINOv2 and AST call it layernorm,
# CLIP and SigLIP vision post_layernorm, Whisper's encoder layer_norm.
FINAL_NORM_NAMES = ("layernorm", "post_layernorm", "layer_norm")


class Encoder(nn.Module):
    """A frozen encoder that summarises each of its blocks by one token (or one token per time step).

    eP-ALM reads the [CLS] token of several encoder blocks, so the interface returns one token per
    block (the [CLS] token, or the mean over positions for models without one):
    ``forward(pixels) -> [batch, num_blocks, dim]``. Encoders that see a clip one frame at a time keep
    the time axis, ``[batch, num_blocks, num_tokens, dim]``, and say so by a ``num_tokens`` that is not
    None; the model decides whether to average it or to keep the order.

    Connectors that read patch tokens (LiMBeR-all, MAPL, pooled patches) use image encoders built with
    ``tokens="patches"``: ``forward(pixels) -> [batch, num_blocks, 1 + patches, dim]``, the summary token
    first, then the patch tokens row by row over a ``patch_grid`` of rows x columns.

    Reading a file belongs to the encoder, as does preprocessing, because only it knows its modality,
    frame sampling, resolution and normalisation: ``load(path)`` decodes one file into what
    ``preprocess`` takes, and ``fingerprint`` names the weights *and* all of that, so that cached
    features are never reused across any of them. ``preprocess`` gives a tensor, or a transformers
    ``BatchFeature`` where the model needs more than one input (audio windows with their lengths);
    either is moved with ``.to(device)`` and passed to ``forward`` as it is.
    """

    name: str
    num_blocks: int
    dim: int
    modality: str = "image"
    num_tokens: int | None = None  # length of the token (time) axis of forward's output; None: no such axis
    tokens: str = "cls"  # see TOKENS
    patch_grid: tuple[int, int] | None = None  # rows x columns of patch tokens, when tokens is "patches"

    def load(self, path: str | Path) -> Any:
        """One media file, decoded; a BadInputError naming the file when it cannot be used."""
        return load_image(path)

    def preprocess(self, media: list[Any]) -> torch.Tensor | BatchFeature:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor | BatchFeature) -> torch.Tensor:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def final_norm(self) -> nn.Module:
        """The LayerNorm the encoder applies after its last block, affine included: the official eP-ALM ViT passes
        every block's [CLS] through it (``encoder_norm``). It acts on each token alone, so it applies to the cached
        per-block tokens as it would have inside the encoder."""
        model = getattr(self, "model", None)
        for name in FINAL_NORM_NAMES:
            norm = getattr(model, name, None)
            if isinstance(norm, nn.LayerNorm):
                return norm
        raise ValueError(f"encoder '{self.name}' has no final LayerNorm ({', '.join(FINAL_NORM_NAMES)}) to apply: "
                         "set encoder_norm: false")

    def freeze(self) -> Encoder:
        """Frozen weights: no gradients, no optimizer state, eval mode for good."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Encoder:
        # A frozen encoder stays in eval mode even when the surrounding model is put in train mode.
        return super().train(False)
