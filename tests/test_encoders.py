"""Encoders: one token per block, frozen for good, preprocessing as configured, faithful conversions."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from transformers import AutoModel, CLIPConfig, Dinov2Config, SiglipVisionConfig, ViTConfig

from sensorium import zoo
from sensorium.encoders import load_encoder
from sensorium.encoders.hf_vision import IMAGENET_MEAN, IMAGENET_STD

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8)
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)

# kind -> (config, whether the checkpoint holds a text tower too, whether the model has a [CLS] token)
CONFIGS = {
    "vit": (lambda: ViTConfig(**TINY), False, True),
    "dinov2": (lambda: Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=32, patch_size=8), False, True),
    "clip": (lambda: CLIPConfig(vision_config=TINY, text_config=TINY_TEXT), True, True),
    "siglip": (lambda: SiglipVisionConfig(**TINY), False, False),
}


@pytest.fixture(scope="module", autouse=True)
def hermetic(tmp_path_factory):
    """Converted weights go to a private cache, and nothing may reach the hub."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(zoo.CACHE_ENV, str(tmp_path_factory.mktemp("sensorium-cache")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def _save_tiny(kind: str, folder: Path) -> Path:
    torch.manual_seed(0)
    AutoModel.from_config(CONFIGS[kind][0]()).save_pretrained(folder)
    return folder


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_one_token_per_block_from_the_models_own_hidden_states(kind, tmp_path):
    folder = _save_tiny(kind, tmp_path / kind)
    encoder = load_encoder(str(folder))
    _, has_text_tower, has_cls = CONFIGS[kind]
    assert (encoder.num_blocks, encoder.dim, encoder.uses_cls) == (2, 32, has_cls)

    pixels = torch.randn(3, 3, 32, 32)
    tokens = encoder(pixels)
    assert tokens.shape == (3, 2, 32)

    reference = AutoModel.from_pretrained(folder).eval()
    reference = reference.vision_model if has_text_tower else reference
    with torch.no_grad():
        hidden = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[1:]
    expected = torch.stack([h[:, 0] if has_cls else h.mean(dim=1) for h in hidden], dim=1)
    torch.testing.assert_close(tokens, expected)


def test_frozen_and_stays_in_eval_mode(tmp_path):
    encoder = load_encoder(str(_save_tiny("vit", tmp_path / "vit")))
    encoder.train()
    assert not any(module.training for module in encoder.modules())
    assert not any(param.requires_grad for param in encoder.parameters())


def test_preprocess_defaults_to_config_size_and_imagenet_statistics(tmp_path):
    encoder = load_encoder(str(_save_tiny("vit", tmp_path / "vit")))
    pixels = encoder.preprocess([Image.new("L", (50, 20), 255), Image.new("RGB", (10, 90), (0, 0, 0))])
    assert pixels.shape == (2, 3, 32, 32)
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(pixels[0, :, 5, 7], white)
    torch.testing.assert_close(pixels[1, :, 5, 7], black)


def test_preprocess_follows_preprocessor_config_and_image_size(tmp_path):
    folder = _save_tiny("siglip", tmp_path / "siglip")
    spec = {"size": {"shortest_edge": 40}, "crop_size": {"height": 24, "width": 24},
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    (folder / "preprocessor_config.json").write_text(json.dumps(spec))
    image = Image.new("RGB", (30, 30), (255, 0, 255))

    configured = load_encoder(str(folder))
    pixels = configured.preprocess([image])
    assert pixels.shape == (1, 3, 24, 24)
    torch.testing.assert_close(pixels[0, :, 3, 3], torch.tensor([2.0, -2.0, 2.0]))

    smaller = load_encoder(str(folder), image_size=16)
    assert smaller.preprocess([image]).shape == (1, 3, 16, 16)
    assert smaller.fingerprint() != configured.fingerprint()
    assert str(folder) in smaller.fingerprint()


def test_other_image_sizes_interpolate_position_embeddings(tmp_path):
    encoder = load_encoder(str(_save_tiny("vit", tmp_path / "vit")), image_size=16)
    assert encoder(encoder.preprocess(_images(2))).shape == (2, 2, 32)


def test_packaged_encoders_are_registered_by_modality():
    assert {name: zoo.REGISTRY[name].modality for name in zoo.packaged_names("encoder")} == {
        "dinov2-small": "image", "efficientnet-lite0": "image", "whisper-tiny": "audio", "yamnet": "audio"}


@pytest.mark.parametrize("name", ["no-such-encoder", "./missing/folder", "nobody/no-such-model"])
def test_unknown_names_fail_clearly(name):
    with pytest.raises(ValueError, match=r"dinov2-small, efficientnet-lite0") as failure:
        load_encoder(name)
    assert name in str(failure.value)


def test_efficientnet_refuses_other_sizes():
    with pytest.raises(ValueError, match="224"):
        load_encoder("efficientnet-lite0", image_size=160)


def _onnx_block_outputs(pixels: torch.Tensor) -> torch.Tensor:
    """Every backbone block's output from onnxruntime, read by exposing it as a graph output."""
    import onnxruntime

    entry = zoo.REGISTRY["dinov2-small"]
    part, = entry.parts
    model = onnx.load(str(zoo.package_file(part.package, part.file, part.pip_name)))
    names = [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)]
    del model.graph.output[:]
    outputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names]
    model.graph.output.extend(outputs)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(np.stack(session.run(names, {"input_image": pixels.numpy()}), axis=1))


@pytest.mark.slow
def test_dinov2_small_conversion_matches_onnxruntime_on_every_block():
    encoder = load_encoder("dinov2-small")
    assert (encoder.image_size, encoder.num_blocks, encoder.dim, encoder.uses_cls) == (224, 12, 384, True)
    pixels = encoder.preprocess(_images(2))
    with torch.inference_mode():
        tokens = encoder(pixels)
    expected = _onnx_block_outputs(pixels)[:, :, 0]
    assert (tokens - expected).abs().max().item() < 1e-4

    with torch.inference_mode():
        assert load_encoder("dinov2-small", image_size=112)(torch.zeros(1, 3, 112, 112)).shape == (1, 12, 384)


@pytest.mark.slow
def test_efficientnet_lite0_pools_every_block_zero_padded():
    encoder = load_encoder("efficientnet-lite0")
    with torch.inference_mode():
        tokens = encoder(encoder.preprocess(_images(2)))
    assert tokens.shape == (2, 16, 320)
    assert torch.isfinite(tokens).all()
    for block, channels in enumerate(encoder.block_channels):
        assert tokens[:, block, channels:].abs().sum() == 0
        assert tokens[:, block, :channels].abs().sum() > 0
