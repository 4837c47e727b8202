"""The one interface every frozen perception encoder implements."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn


class Encoder(nn.Module):
    """A frozen encoder that summarises each of its blocks by one token.

    eP-ALM reads the [CLS] token of several encoder blocks, so the interface returns one token per
    block (the [CLS] token, or the mean over positions for models without one):
    ``forward(pixels) -> [batch, num_blocks, dim]``. Preprocessing belongs to the encoder because
    only it knows its resolution and normalisation; ``fingerprint`` names the weights *and* the
    preprocessing so that cached features are never reused across either.
    """

    name: str
    num_blocks: int
    dim: int

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def freeze(self) -> Encoder:
        """Frozen weights: no gradients, no optimizer state, eval mode for good."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Encoder:
        # A frozen encoder stays in eval mode even when the surrounding model is put in train mode.
        return super().train(False)
