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
    """

    def __init__(self, encoder_dim: int, lm_dim: int, token_norm: bool = True) -> None:
        super().__init__()
        self.token_norm = token_norm
        self.linear = nn.Linear(encoder_dim, lm_dim)

    def forward(self, block_tokens: torch.Tensor) -> torch.Tensor:
        """[batch, blocks, encoder_dim] -> [batch, blocks, lm_dim]."""
        if self.token_norm:
            block_tokens = F.layer_norm(block_tokens, block_tokens.shape[-1:])
        return self.linear(block_tokens)
