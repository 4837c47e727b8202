"""``sensorium compare --smoke``: the same methods end to end on tiny random models and data, in seconds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data import write_manifest
from ..testing import colour_squares, save_tiny_lm, save_tiny_vit
from .comparison import Comparison, merge_recipe

SMOKE_WORDS = ("question answer what color is the shape a an picture of square red green blue yellow "
               "small large").split()
# The depths of the default models (30 LM layers, 12 ViT blocks), so that methods naming layers or blocks
# keep their meaning; narrow and lightly initialised, so that 30 layers stay fast and finite.
SMOKE_LM = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=30, num_attention_heads=2,
                num_key_value_heads=1, pad_token_id=0, initializer_range=0.02)
SMOKE_VIT = dict(hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32)


def smoke(comparison: Comparison, folder: Path) -> Comparison:
    """The same methods on tiny random models and a tiny colour data set, a few steps each: seconds, not hours."""
    models = {"lm": save_tiny_lm(folder / "models" / "lm", words=SMOKE_WORDS, **SMOKE_LM),
              "encoder": save_tiny_vit(folder / "models" / "vit", **SMOKE_VIT)}
    training, test = colour_squares(folder / "data", comparison.task)
    data = {"train": write_manifest(training, folder / "data" / "train.jsonl"),
            "eval": write_manifest(test, folder / "data" / "test.jsonl")}
    recipe = merge_recipe(comparison.recipe, {
        "model": {**models, "image_size": 32},
        "data": data,
        "training": {"batch_size": 4, "max_steps": 2, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 100,
                     "mixed_precision": "no", "lm_dtype": "float32", "cache_workers": 0, "trackers": []},
        "generation": {"max_new_tokens": 3},
        "eval_batch_size": 8,
    })
    methods = [replace(m, lr_grid=m.lr_grid[:2], overrides=_tiny_lm(m.overrides, folder)) for m in comparison.methods]
    return replace(comparison, recipe=recipe, methods=methods, seeds=comparison.seeds[:2], validation=4,
                   latency_batch=2, latency_repeats=1, out=folder)


def _tiny_lm(overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A method that names its own frozen LM gets a tiny random LM of its own, one folder per name."""
    name = overrides.get("model", {}).get("lm")
    if name is None:
        return overrides
    tiny = folder / "models" / f"lm-{name.replace('/', '-')}"
    if not tiny.is_dir():
        save_tiny_lm(tiny, words=SMOKE_WORDS, **SMOKE_LM)
    return {**overrides, "model": {**overrides["model"], "lm": str(tiny)}}
