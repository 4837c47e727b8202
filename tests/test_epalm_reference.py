"""eP-ALM adapters saved by earlier code compute exactly what they computed then, bit for bit.

tests/data/epalm-reference holds, per case, a tiny frozen LM, an adapter and the outputs recorded when it was
made (tests/make_epalm_reference.py). Bitwise equality holds for one machine type and torch build: the
recording used one thread on x86-64 with torch 2.13; another BLAS kernel may round differently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sensorium import PerceptualLM
from sensorium.encoders import load_encoder
from sensorium.lm import load_lm
from sensorium.recipe import TrainingOptions
from sensorium.train import build_optimizer

REFERENCE = Path(__file__).parent / "data" / "epalm-reference"
QUESTIONS = ["what is the shape ?", "is there a red circle in the image ?", "color ?"]
TARGETS = ["circle", "yes", "red"]


def restore(case: str, tiny_vit_folder: str) -> PerceptualLM:
    folder = REFERENCE / case
    lm, tokenizer = load_lm(str(folder / "lm"))
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    encoder = load_encoder(config["encoder"].replace("tiny-vit", tiny_vit_folder), num_frames=config["num_frames"])
    return PerceptualLM.from_pretrained(folder / "adapter", lm=lm, tokenizer=tokenizer, encoder=encoder)


@pytest.mark.parametrize("case", sorted(p.name for p in REFERENCE.iterdir()))
def test_saved_epalm_adapters_compute_what_they_did(case, tiny_vit_folder):
    model = restore(case, tiny_vit_folder)
    expected = load_file(REFERENCE / case / "expected.safetensors")
    generations = json.loads((REFERENCE / case / "generations.json").read_text())
    features = expected["features"]

    model.eval()
    options = {"max_new_tokens": 6, "min_new_tokens": 3}
    assert model.generate(features, QUESTIONS, **options) == generations["greedy"]
    assert model.generate(features, QUESTIONS, num_beams=3, **options) == generations["beams"]
    assert model.generate_uncached(features, QUESTIONS, **options) == generations["uncached"]

    model.train()
    assert torch.equal(model.map_features(features), expected["mapped"])
    loss = model(features, QUESTIONS, TARGETS)
    assert torch.equal(loss.detach(), expected["loss"])
    loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(parameter.grad, expected[f"grad.{name}"]), name
    build_optimizer(model, TrainingOptions(lr=1e-2, prompt_lr=1e-2)).step()
    assert torch.equal(model(features, QUESTIONS, TARGETS).detach(), expected["loss_after_step"])
