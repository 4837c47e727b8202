"""What every connector shares: what it is built from, where its tokens enter the LM, and how many columns they take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

# Where a connector's tokens enter the frozen LM: written into the slot columns of the input embeddings
# (a prefix, as LiMBeR, LLaVA and MAPL do), or into the slot's hidden state at each injection layer (eP-ALM).
PLACEMENTS = ("input", "layers")


@dataclass(frozen=True)
class ConnectorSetup:
    """What the model knows when it builds a connector, from the adapter config, the encoder and the LM."""

    encoder_dim: int
    lm_dim: int  # width where the tokens go: the input embeddings ("input") or the decoder layers ("layers")
    blocks: int  # encoder blocks read (the second axis of the features)
    layer_tokens: tuple[int, ...] = ()  # "layers": for each injection layer, the block whose tokens it receives
    patch_grid: tuple[int, int] | None = None  # rows x columns of patch tokens, for connectors that read them
    num_frames: int | None = None  # frames kept in time order (temporal: frames)
    token_norm: bool = True
    shared_linear: bool = True


class Connector(nn.Module):
    """The trainable map from frozen encoder tokens to LM-width tokens.

    A connector says where its tokens go (``placement``), which tokens of each encoder block it reads
    (``tokens``, the word encoders use for what they give: ``"cls"``, features ``[batch, blocks, (frames,)
    dim]``, or ``"patches"``, ``[batch, blocks, 1 + patches, dim]``) and how many slot columns its tokens need
    (``columns``); the model lays the input out from that.
    ``forward`` gives ``[batch, columns, lm_dim]`` for the input, or ``[batch, layers, columns, lm_dim]``
    (``[batch, layers, lm_dim]`` for one column) for the injection layers.
    """

    placement: ClassVar[str]
    tokens: ClassVar[str]
    keeps_frames: ClassVar[bool] = False  # whether it can give one column per video frame
    columns: int


def token_norm(tokens: torch.Tensor) -> torch.Tensor:
    """A LayerNorm without learned parameters: encoder blocks differ in scale, a shared map should not care."""
    return F.layer_norm(tokens, tokens.shape[-1:])
