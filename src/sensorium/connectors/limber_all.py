"""LiMBeR-all / LLaVA: every patch token of the final encoder block becomes an LM input token."""

from __future__ import annotations

import torch
from torch import nn

from .base import Connector, ConnectorSetup, token_norm


class LimberAllConnector(Connector):
    """Each patch token of one block, mapped to the LM input width: as many input columns as patches.

    A linear map (LiMBeR with all tokens; LLaVA-1), or with ``mlp: true`` LLaVA-1.5's two linear layers with
    a GELU between them. The richest input of all the connectors, and the costliest at inference: every
    patch is one more position in every attention and in the KV cache.
    """

    placement = "input"
    tokens = "patches"

    def __init__(self, setup: ConnectorSetup, mlp: bool = False) -> None:
        super().__init__()
        if setup.patch_grid is None:
            raise ValueError("limber-all reads patch tokens: the encoder must give them (tokens: patches)")
        self.token_norm = setup.token_norm
        self.columns = setup.patch_grid[0] * setup.patch_grid[1]
        if mlp:
            self.map = nn.Sequential(nn.Linear(setup.encoder_dim, setup.lm_dim), nn.GELU(),
                                     nn.Linear(setup.lm_dim, setup.lm_dim))
        else:
            self.map = nn.Linear(setup.encoder_dim, setup.lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[batch, 1 block, 1 + patches, encoder_dim] -> [batch, patches, lm_dim]."""
        patches = features[:, 0, 1:]  # the summary token comes first
        return self.map(token_norm(patches) if self.token_norm else patches)
