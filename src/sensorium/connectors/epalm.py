"""eP-ALM's connector: one linear layer shared by the tokens of every chosen encoder block."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class EPALMConnector(nn.Module):
    """Maps each block's summary token to the LM width with ONE shared linear layer.

    Intermediate encoder blocks produce tokens of very different scales, so each token is first
    normalised without learned parameters ("token norm"); the shared layer then only has to learn
    a direction per feature, not a scale per block.

    With ``num_frames``, each block brings one token per video frame; the same linear layer maps every
    frame and a learned position per frame is added, so the LM can tell the frames' order. It starts at
    zero: the frames begin as what the shared layer makes of them, and order is learned only if it helps.
    """

    def __init__(self, encoder_dim: int, lm_dim: int, token_norm: bool = True, num_frames: int | None = None) -> None:
        super().__init__()
        self.token_norm = token_norm
        self.linear = nn.Linear(encoder_dim, lm_dim)
        self.register_parameter("frame_position", nn.Parameter(torch.zeros(num_frames, lm_dim)) if num_frames else None)

    def forward(self, block_tokens: torch.Tensor) -> torch.Tensor:
        """[batch, blocks, encoder_dim] -> [batch, blocks, lm_dim]; with frames, [batch, blocks, frames, ...]."""
        if self.token_norm:
            block_tokens = F.layer_norm(block_tokens, block_tokens.shape[-1:])
        mapped = self.linear(block_tokens)
        if self.frame_position is not None:
            if mapped.ndim != 4 or mapped.shape[2] != len(self.frame_position):
                raise ValueError(f"expected {len(self.frame_position)} frame tokens per block, "
                                 f"got features of shape {tuple(block_tokens.shape)}")
            mapped = mapped + self.frame_position
        return mapped
