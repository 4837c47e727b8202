"""eP-ALM with patch tokens: each injection layer receives k tokens pooled from its block's patches, not one [CLS]."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from .base import ConnectorSetup, token_norm
from .epalm import EPALMConnector

POOLS = ("mean", "attention")


class EPALMPatchesConnector(EPALMConnector):
    """eP-ALM's inner-layer injection and shared linear layer, fed k pooled patch tokens per block.

    The [CLS] token is one summary the encoder was trained to make; the patches keep where things are.
    Pooling keeps the LM's cost nearly eP-ALM's (k slot columns instead of one, k = 4 by default):

    * ``pool: mean``: average pooling of the patch grid into a sqrt(k) x sqrt(k) grid of regions;
    * ``pool: attention``: k learned queries per block attend over the block's patches (keys are the
      token-normed patches, values the patches), a soft choice of regions learned for the task.

    The pooled tokens then go through eP-ALM's token norm and linear layer (shared, or one per layer).
    """

    tokens = "patches"
    keeps_frames = False

    def __init__(self, setup: ConnectorSetup, pool: str = "mean", tokens: int = 4) -> None:
        super().__init__(replace(setup, num_frames=None))
        if pool not in POOLS:
            raise ValueError(f"epalm-patches: unknown pool '{pool}'; available: {', '.join(POOLS)}")
        if setup.patch_grid is None:
            raise ValueError("epalm-patches reads patch tokens: the encoder must give them (tokens: patches)")
        self.pool = pool
        self.columns = tokens
        if pool == "mean":
            side = math.isqrt(tokens)
            if side * side != tokens or side > min(setup.patch_grid):
                raise ValueError(f"epalm-patches: mean pooling needs a square number of tokens, at most the "
                                 f"{setup.patch_grid[0]}x{setup.patch_grid[1]} patch grid; got tokens={tokens}")
            self.regions = (side, side)
            self.patch_grid = setup.patch_grid
        else:
            # Unit-variance queries against token-normed keys give logits of unit scale after the 1/sqrt(d).
            self.queries = nn.Parameter(torch.randn(setup.blocks, tokens, setup.encoder_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[batch, blocks, 1 + patches, encoder_dim] -> [batch, layers, tokens, lm_dim]."""
        patches = features[:, :, 1:]  # the summary token comes first
        pooled = self._mean_pool(patches) if self.pool == "mean" else self._attention_pool(patches)
        return super().forward(pooled)

    def _mean_pool(self, patches: torch.Tensor) -> torch.Tensor:
        batch, blocks, _, dim = patches.shape
        grid = patches.reshape(batch * blocks, *self.patch_grid, dim).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(grid, self.regions)  # [batch * blocks, dim, rows, columns]
        return pooled.flatten(2).transpose(1, 2).reshape(batch, blocks, self.columns, dim)

    def _attention_pool(self, patches: torch.Tensor) -> torch.Tensor:
        keys = token_norm(patches)
        scores = torch.einsum("bnpd,nkd->bnkp", keys, self.queries) / math.sqrt(patches.shape[-1])
        return scores.softmax(dim=-1) @ patches
