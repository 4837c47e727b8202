"""Generation cost of eP-ALM against three baselines, measured in the same process.

* no KV cache (what the public eP-ALM code does): every new token recomputes the whole sequence;
* the frozen LM alone on the same text prompt: the floor, since eP-ALM adds only two input positions;
* an all-patch-tokens prefix (LLaVA / LiMBeR-all style): every patch of the last encoder block enters
  the LM as an input token, which lengthens every attention and the KV cache.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..model import PerceptualLM
from .common import Timer, add_common_arguments, build_model, examples, images, print_table, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="questions per generate()")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[10, 32], help="exact answer lengths")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3], help="1 is greedy")


@dataclass
class Inputs:
    """One batch in the three forms compared: eP-ALM features, a plain text prompt, a patch-token prefix."""

    features: torch.Tensor
    questions: list[str]
    input_ids: torch.Tensor
    text_mask: torch.Tensor
    patch_embeds: torch.Tensor
    patch_mask: torch.Tensor


@torch.inference_mode()
def prepare(model: PerceptualLM, batch_size: int, limit: int | None) -> Inputs:
    """Features and prompts of real easy-vqa test questions."""
    batch = examples("test", batch_size, limit)
    pictures = images(batch)
    questions = [example.question for example in batch]
    ids, mask = text_prompt(model, questions)
    patch_embeds, patch_mask = _patch_prefix(model, pictures, questions)
    return Inputs(model.encode(pictures), questions, ids, mask, patch_embeds, patch_mask)


def text_prompt(model: PerceptualLM, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The template-formatted questions, left padded, with the BOS the LM expects: the LM-alone input."""
    texts = [model.bos + ids for ids in model.prompt_ids(questions)]
    width = max(len(ids) for ids in texts)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(t)) + t for t in texts], device=model.lm.device)
    mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in texts], device=model.lm.device)
    return ids, mask


def _patch_prefix(model: PerceptualLM, pictures: list[Image.Image],
                  questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """eP-ALM's input with its soft prompt and slot replaced by every final-block patch token, linearly mapped."""
    encoder = model.encoder
    pixels = encoder.preprocess(pictures).to(model.lm.device)
    patches = encoder.model(pixel_values=pixels, output_hidden_states=True, **encoder._forward_kwargs).last_hidden_state
    torch.manual_seed(0)
    projection = nn.Linear(encoder.dim, model.lm.get_input_embeddings().embedding_dim).to(model.lm.device)
    # The patch-prefix model's own layout: [bos][patches][pads][text] (no learned prefix of eP-ALM's).
    texts = model.prompt_ids(questions)
    width, pad, device = max(map(len, texts)), model.tokenizer.pad_token_id, model.lm.device
    ids = torch.tensor([model.bos + [pad] * (width - len(t)) + t for t in texts], device=device)
    mask = torch.tensor([[1] * len(model.bos) + [0] * (width - len(t)) + [1] * len(t) for t in texts], device=device)
    embeds = model.lm.get_input_embeddings()(ids)
    head = len(model.bos)
    prefix = projection(patches).to(embeds.dtype)
    ones = torch.ones(prefix.shape[:2], dtype=mask.dtype, device=mask.device)
    return (torch.cat([embeds[:, :head], prefix, embeds[:, head:]], 1),
            torch.cat([mask[:, :head], ones, mask[:, head:]], 1))


@torch.inference_mode()
def measured_kv_bytes(model: PerceptualLM, embeds: torch.Tensor, mask: torch.Tensor) -> int:
    """Bytes of keys + values that a prefill of this input leaves in the cache."""
    cache = model.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1).cache
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def _options(model: PerceptualLM, questions: list[str], new_tokens: int, beams: int) -> dict[str, Any]:
    """Exactly ``new_tokens`` tokens for every run (EOS held back), so all runs do equal work."""
    return model.generation_options(questions, max_new_tokens=new_tokens, num_beams=beams, min_new_tokens=new_tokens)


def time_generation(model: PerceptualLM, inputs: Inputs, new_tokens: int, beams: int,
                    timer: Timer) -> dict[str, float]:
    """Seconds per generate() call for eP-ALM with and without cache, the LM alone and the patch prefix."""
    options = _options(model, inputs.questions, new_tokens, beams)
    runs = {
        "epalm": lambda: model.generate(inputs.features, inputs.questions, **options),
        "nocache": lambda: model.generate_uncached(inputs.features, inputs.questions, **options),
        "lm": lambda: model.lm.generate(input_ids=inputs.input_ids, attention_mask=inputs.text_mask, **options),
        "allpatch": lambda: model.lm.generate(inputs_embeds=inputs.patch_embeds, attention_mask=inputs.patch_mask,
                                              **options),
    }
    with torch.inference_mode():
        return {name: timer.median(call) for name, call in runs.items()}


def measure(model: PerceptualLM, inputs: Inputs, new_tokens: int, beams: int, timer: Timer,
            device: str) -> dict[str, Any]:
    """One grid point: absolute times, KV-cache sizes and the ratios against eP-ALM with its cache."""
    # Generation runs in the LM's own dtype, as `sensorium ask` and `eval` do: under autocast every
    # frozen weight would be cast again at every new token, which costs more than the token itself.
    seconds = time_generation(model, inputs, new_tokens, beams, timer)
    epalm_kv = measured_kv_bytes(model, *model._embed(model.prompt_ids(inputs.questions)))
    patch_kv = measured_kv_bytes(model, inputs.patch_embeds, inputs.patch_mask)
    return {
        "batch": len(inputs.questions), "new_tokens": new_tokens, "beams": beams,
        **{f"{name}_ms": 1000 * value for name, value in seconds.items()},
        "epalm_kv_bytes": epalm_kv, "allpatch_kv_bytes": patch_kv,
        "nocache_over_epalm": seconds["nocache"] / seconds["epalm"],
        "epalm_over_lm": seconds["epalm"] / seconds["lm"],
        "allpatch_over_epalm": seconds["allpatch"] / seconds["epalm"],
        "allpatch_over_epalm_kv": patch_kv / epalm_kv,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = build_model(args)
    timer = Timer(args.device, args.repeats, args.warmup)
    rows = []
    for batch_size in args.batch_sizes:
        inputs = prepare(model, batch_size, args.limit)
        rows += [measure(model, inputs, tokens, beams, timer, args.device)
                 for tokens in args.new_tokens for beams in args.beams]
    print_table([_summary(row) for row in rows], "generation: eP-ALM (KV cache) against its baselines")
    return record("generation", args, {"rows": rows})


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """The columns that fit a terminal: the grid point, eP-ALM's time and every ratio."""
    return {"batch": row["batch"], "tokens": row["new_tokens"], "beams": row["beams"], "epalm ms": row["epalm_ms"],
            "nocache/epalm": row["nocache_over_epalm"], "epalm/lm (target <=1.10)": row["epalm_over_lm"],
            "allpatch/epalm": row["allpatch_over_epalm"], "kv allpatch/epalm": row["allpatch_over_epalm_kv"]}
