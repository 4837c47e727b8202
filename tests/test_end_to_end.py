"""End to end on the packaged default models (SmolLM2-135M + DINOv2-S) and real easy-vqa images."""

from __future__ import annotations

import pytest
import torch

from sensorium import AdapterConfig, PerceptualLM
from sensorium.data import read_dataset
from sensorium.media import load_image
from sensorium.recipe import Recipe
from sensorium.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(0)
    model = PerceptualLM(AdapterConfig(image_size=112)).eval()
    with torch.no_grad():  # an untrained but strong connector: the image must steer the answers
        model.connector.linear.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def easy_vqa_batch():
    examples = read_dataset({"format": "easy-vqa", "split": "test", "limit": 6, "seed": 3})
    return [load_image(e.media) for e in examples], [e.question for e in examples]


def test_default_trainable_share_is_under_0_2_percent(default_model):
    trainable, total = default_model.parameter_counts()
    assert trainable / total < 0.002
    assert trainable == 576 * 384 + 576 + 2 * 576  # shared linear + bias, 1 prompt token, slot


@pytest.mark.parametrize("num_beams", [1, 3])
def test_default_model_cached_generation_equals_recomputation(default_model, easy_vqa_batch, num_beams):
    images, questions = easy_vqa_batch
    features = default_model.encode(images)
    cached = default_model.generate(features, questions, max_new_tokens=12, num_beams=num_beams)
    recomputed = default_model.generate_uncached(features, questions, max_new_tokens=12, num_beams=num_beams)
    assert cached == recomputed
    assert len(set(cached)) > 1


def test_short_training_lowers_the_loss(tmp_path, monkeypatch):
    recipe = Recipe.from_dict({
        "model": {"image_size": 112},
        "data": {"train": {"format": "easy-vqa", "split": "test", "limit": 96, "seed": 0}},
        "training": {"batch_size": 16, "max_steps": 12, "warmup_steps": 2, "eval_every": 0,
                     "checkpoint_every": 6},
        "out": str(tmp_path / "run"),
    })
    losses = []
    original = PerceptualLM.forward

    def recording(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(PerceptualLM, "forward", recording)
    train(recipe)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (tmp_path / "run" / "adapter" / "adapter.safetensors").stat().st_size < 2_000_000
