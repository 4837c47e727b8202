"""MAPL-style mapper: a small transformer turns the final block's tokens into a few LM input tokens."""

from __future__ import annotations

import torch
from torch import nn

from .base import Connector, ConnectorSetup, token_norm


class MAPLConnector(Connector):
    """Learned queries cross-attend to one block's tokens ([CLS] and patches) through a few transformer layers.

    MAPL (Mañas et al., EACL 2023) trains a small transformer between a frozen encoder and a frozen LM and
    feeds the LM a fixed number of input tokens, whatever the image size. Here: the tokens are token-normed
    and projected to the mapper's ``width``; ``queries`` learned vectors pass through ``depth`` pre-norm
    ``nn.TransformerDecoderLayer``s (self-attention among the queries, cross-attention to the image tokens,
    MLP); a final norm and a linear layer bring them to the LM input width.
    """

    placement = "input"
    tokens = "patches"

    def __init__(self, setup: ConnectorSetup, queries: int = 32, depth: int = 4, width: int = 256,
                 heads: int = 8) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"mapl: width {width} must be a multiple of heads {heads}")
        self.token_norm = setup.token_norm
        self.columns = queries
        self.project_in = nn.Linear(setup.encoder_dim, width)
        self.queries = nn.Parameter(torch.randn(queries, width) * width**-0.5)
        layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.mapper = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(width))
        self.project_out = nn.Linear(width, setup.lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[batch, 1 block, 1 + patches, encoder_dim] -> [batch, queries, lm_dim]."""
        tokens = features[:, 0]
        image = self.project_in(token_norm(tokens) if self.token_norm else tokens)
        queries = self.queries.expand(len(features), -1, -1)
        return self.project_out(self.mapper(queries, image))
