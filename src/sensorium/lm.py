"""Loading the frozen causal language model: any transformers decoder by id, folder or GGUF file."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch import nn
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from . import zoo
from .config import WEIGHT_FORMATS
from .injection import decoder_layers
from .layout import LMFacts
from .safe_load import from_pretrained

# What PerceptualLM passes to the LM's forward: the learned prefix enters as embeddings, positions
# come from the attention mask (padding sits between the slot and the text), and only the logits of
# the answer span are computed.
REQUIRED_FORWARD_INPUTS = ("inputs_embeds", "attention_mask", "position_ids", "logits_to_keep")


def last_positions(count: int, device: torch.device) -> torch.Tensor:
    """``logits_to_keep`` for the last ``count`` positions, as indices rather than the int transformers would slice
    with: the LM head over a strided slice of the hidden states makes PyTorch's CPU matmul copy the head's weight
    once per row (at batch 64, 0.5 s in float32 and 10 s in bfloat16 against 13-45 ms), where indexing gathers
    the kept rows into a contiguous tensor first. The same logits either way."""
    return torch.arange(-count, 0, device=device)


def convert_gguf(source: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> None:
    """De-quantise a GGUF checkpoint once into an ordinary transformers folder (fp32 unless ``dtype``).

    A 1.5B LM is 7 GB in fp32: stored in bf16 it takes half, and loading in fp32 casts it back exactly.
    """
    model = from_pretrained(AutoModelForCausalLM, source.parent, "language model", gguf_file=source.name,
                            dtype=dtype)
    tokenizer = from_pretrained(AutoTokenizer, source.parent, "language model", gguf_file=source.name)
    # The de-quantised weights are plain floats: drop the quantiser so the folder saves as a normal model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def gguf_source(path: Path) -> tuple[str, str | None]:
    """(from_pretrained folder, GGUF file in it or None) for a local .gguf file or folder."""
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not (path / "config.json").exists() and ggufs:
        return str(path), ggufs[0].name
    return str(path), None


def resolve_lm_path(name_or_path: str) -> tuple[str, str | None]:
    """Map a packaged name, a folder, a .gguf file or a hub id to (from_pretrained path, gguf file)."""
    origin = zoo.locate(name_or_path, "lm")
    if origin == "packaged":
        return str(zoo.resolve(name_or_path)), None
    if origin == "local":
        return gguf_source(Path(name_or_path).expanduser())
    return name_or_path, None


def _check_forward(model_class: type, name: str) -> None:
    accepted = inspect.signature(model_class.forward).parameters
    missing = [argument for argument in REQUIRED_FORWARD_INPUTS if argument not in accepted]
    if missing:
        raise ValueError(f"language model '{name}' ({model_class.__name__}) is not supported: its forward() does not "
                         f"accept {', '.join(missing)}, which slot injection needs")


def check_lm_config(config: PretrainedConfig, name: str) -> type:
    """The causal-LM class for ``config``, or a ValueError naming the model and what it lacks.

    Runs on the configuration alone, so an unsupported model is refused before any weight is read.
    """
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"language model '{name}' ({config.model_type}) is an encoder-decoder model; "
                         "eP-ALM needs a decoder-only causal LM (e.g. OPT, GPT-2, Llama, Qwen2, Gemma3, Phi)")
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(f"language model '{name}' ({config.model_type}) has no causal-LM class in transformers")
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    _check_forward(model_class, name)
    return model_class


def check_lm(lm: nn.Module, name: str) -> None:
    """Refuse, with the model's name, a loaded LM that slot injection cannot drive."""
    check_lm_config(lm.config, name)
    _check_forward(type(lm), name)
    try:
        decoder_layers(lm)
    except ValueError as error:
        raise ValueError(f"language model '{name}' is not supported: {error}") from error


def lm_facts(lm: nn.Module) -> LMFacts:
    """The shape of a causal LM, loaded or built on the meta device from its configuration."""
    text = lm.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return LMFacts(parameters=sum(p.numel() for p in lm.parameters()), layers=len(decoder_layers(lm)),
                   width=text.hidden_size, embedding_width=lm.get_input_embeddings().weight.shape[1],
                   kv_width=kv_heads * head_dim)


def load_lm(name_or_path: str, dtype: torch.dtype = torch.float32,
            device_map: str | dict | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, frozen: no gradients, eval mode.

    transformers 5 builds the model on the meta device and reads each weight once, straight into
    ``dtype`` on the device ``device_map`` assigns it (``{"": "cuda:1"}``: one device; ``"auto"``:
    spread over the visible GPUs, then CPU RAM): a 7B LM loaded in bf16 never holds an fp32 copy.
    """
    path, gguf_file = resolve_lm_path(name_or_path)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    what = "language model"
    try:
        check_lm_config(from_pretrained(AutoConfig, path, what, **extra), name_or_path)
        model = from_pretrained(AutoModelForCausalLM, path, what, dtype=dtype, device_map=device_map, **extra)
        tokenizer = from_pretrained(AutoTokenizer, path, what, **extra)
    except OSError as error:
        packaged = ", ".join(sorted(zoo.packaged_names("lm")))
        raise ValueError(
            f"cannot load language model '{name_or_path}': {error}. Packaged names: {packaged}"
        ) from error
    check_lm(model, name_or_path)
    model.requires_grad_(False)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


NATIVE_BF16_ENV = "SENSORIUM_NATIVE_BF16"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX); without, bf16 is emulated.

    The one place where ``auto`` reads the CPU, for the LM's weight format (weight_format) and for training's
    mixed precision (train.mixed_precision). SENSORIUM_NATIVE_BF16=1 or 0 gives the answer instead, so that a
    run can choose what it would choose on another CPU, and the tests hold either branch on any machine."""
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{NATIVE_BF16_ENV} must be 1 or 0 (or unset: read the CPU's flags), not '{forced}'")
        return forced == "1"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def weight_format(weights: str, device: str | torch.device = "cpu", captions: bool = False) -> str:
    """The weight format ``weights`` names on ``device``; ``auto`` is the one ``bench floor`` measured fastest
    there for eval's batched decoding, among those that leave the scores where float32 puts them: bf16 on GPUs
    that have it (fp16 on older ones) and on CPUs with native bf16 instructions, float32 on other CPUs, where
    emulated bf16 is slower once answers are batched. A model that writes ``captions`` keeps float32: bf16
    weights left 2,000 easy-vqa answers unchanged but moved scenes CIDEr by 7.4 (30 of 100 captions changed),
    and a format that moves a score by more than 1 CIDEr (0.3 points of accuracy) is not chosen silently
    (docs/performance.md). int8 is never chosen: torchao's CPU kernels decode slower than float32, and it moved
    CIDEr by 3.7."""
    if weights == "auto":
        if captions:
            return "float32"
        if torch.device(device).type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "float32"
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format '{weights}'; available: auto, {', '.join(WEIGHT_FORMATS)}")
    return weights


def loading_dtype(weights: str) -> torch.dtype:
    """The dtype to load an LM in that will be held as ``weights`` (a format, not auto): int8 is quantised from
    float32 weights."""
    return torch.float32 if weights == "int8" else getattr(torch, weights)


def hold_weights(lm: nn.Module, weights: str) -> nn.Module:
    """The frozen LM with its weights held as ``weights``, in place: ``float32``, ``bfloat16``, ``float16`` (a
    cast), or ``int8``: torchao's weight-only quantisation of every linear layer (one scale per output row), so a
    decode step reads a quarter of the float32 bytes while activations stay in the LM's float dtype."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format '{weights}'; available: {', '.join(WEIGHT_FORMATS)}")
    if weights != "int8":
        return lm.to(getattr(torch, weights))
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(lm, Int8WeightOnlyConfig())
    return lm


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor occupies, through the inner tensors of a quantised one (int8 data, scales)."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weight_bytes_per_token(lm: nn.Module) -> int:
    """Weight bytes one decode step must read: every parameter once, except an input embedding table that is
    not also the output head (a step looks up one row of it)."""
    embedding, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    return sum(stored_bytes(p) for p in lm.parameters() if p is head or p is not embedding)
