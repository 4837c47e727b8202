"""LiMBeR-1: the encoder's final summary token, linearly mapped to ONE input token of the LM."""

from __future__ import annotations

import torch
from torch import nn

from .base import Connector, ConnectorSetup, token_norm


class LimberOneConnector(Connector):
    """One linear layer from the [CLS] token (or mean token) of one block to one LM input token.

    LiMBeR (Merullo et al., ICLR 2023) shows that a linear map into the input embeddings suffices for a
    frozen LM to describe images. The token sits in the slot column of the input, after the soft prompt,
    and flows through every LM layer like a word: no inner-layer injection.
    """

    placement = "input"
    tokens = "cls"

    def __init__(self, setup: ConnectorSetup) -> None:
        super().__init__()
        self.token_norm = setup.token_norm
        self.columns = 1
        self.linear = nn.Linear(setup.encoder_dim, setup.lm_dim)

    def forward(self, block_tokens: torch.Tensor) -> torch.Tensor:
        """[batch, 1 block, encoder_dim] -> [batch, 1, lm_dim]."""
        return self.linear(token_norm(block_tokens) if self.token_norm else block_tokens)
