"""eP-ALM's connector: one linear layer shared by the tokens of every chosen encoder block."""

from __future__ import annotations

import torch
from torch import nn

from .base import Connector, ConnectorSetup, token_norm


class EPALMConnector(Connector):
    """Maps each block's summary token to the LM width with ONE shared linear layer, for the injection layers.

    Intermediate encoder blocks produce tokens of very different scales, so each token is first
    normalised without learned parameters ("token norm"); the shared layer then only has to learn
    a direction per feature, not a scale per block. Each injection layer receives its block's token
    (``layer_tokens``); with ``shared_linear: false`` every injection layer maps it with a linear layer
    of its own instead (the paper's ablation), or, with the option ``per_block``, every encoder block (what
    the official configs/image/ePALM_vqa.yaml trains: 6 linear layers for 6 blocks over 12 LM layers).

    With ``num_frames``, each block brings one token per video frame; the same linear layer maps every
    frame and a learned position per frame is added, so the LM can tell the frames' order. It starts at
    zero: the frames begin as what the shared layer makes of them, and order is learned only if it helps.
    """

    placement = "layers"
    tokens = "cls"
    keeps_frames = True

    def __init__(self, setup: ConnectorSetup, per_block: bool = False) -> None:
        super().__init__()
        if per_block and setup.shared_linear:
            raise ValueError("connector option per_block gives each encoder block its own linear layer: "
                             "set shared_linear: false with it")
        self.token_norm = setup.token_norm
        self.layer_tokens = list(setup.layer_tokens)
        self.shared = setup.shared_linear
        self.per_block = per_block
        self.columns = setup.num_frames or 1
        if self.shared:
            self.linear = nn.Linear(setup.encoder_dim, setup.lm_dim)
        else:
            count = setup.blocks if per_block else len(self.layer_tokens)
            self.linears = nn.ModuleList(nn.Linear(setup.encoder_dim, setup.lm_dim) for _ in range(count))
        frames = setup.num_frames
        self.register_parameter("frame_position", nn.Parameter(torch.zeros(frames, setup.lm_dim)) if frames else None)

    def forward(self, block_tokens: torch.Tensor) -> torch.Tensor:
        """[batch, blocks, encoder_dim] -> [batch, layers, lm_dim]; with k tokens per block, [batch, blocks, k, ...]."""
        if self.token_norm:
            block_tokens = token_norm(block_tokens)
        if self.shared:  # map each block once, then hand its tokens to every layer it serves
            return self._with_frame_positions(self.linear(block_tokens), block_tokens)[:, self.layer_tokens]
        if self.per_block:
            mapped = torch.stack([linear(block_tokens[:, i]) for i, linear in enumerate(self.linears)], dim=1)
            return self._with_frame_positions(mapped, block_tokens)[:, self.layer_tokens]
        per_layer = block_tokens[:, self.layer_tokens]
        mapped = torch.stack([linear(per_layer[:, i]) for i, linear in enumerate(self.linears)], dim=1)
        return self._with_frame_positions(mapped, block_tokens)

    def _with_frame_positions(self, mapped: torch.Tensor, block_tokens: torch.Tensor) -> torch.Tensor:
        if self.frame_position is None:
            return mapped
        if mapped.ndim != 4 or mapped.shape[2] != len(self.frame_position):
            raise ValueError(f"expected {len(self.frame_position)} frame tokens per block, "
                             f"got features of shape {tuple(block_tokens.shape)}")
        return mapped + self.frame_position
