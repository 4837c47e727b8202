"""eP-ALM adapters saved by earlier code compute what they computed then.

tests/data/epalm-reference holds, per case, a tiny frozen LM, an adapter and the outputs recorded when it was
made (tests/make_epalm_reference.py). What is discrete is required exactly: the generated words (greedy, beams,
uncached), the adapter file's tensor names, shapes and dtypes, which parameters get gradients and the shape
of every tensor. Floating-point values are required within FLOAT32_TOLERANCE of the recording: they were
recorded with one thread on one CPU, and another CPU's kernels (AVX2, AVX-512, AMX, another BLAS) or another
number of threads sum in another order and round the last bits differently.

The tolerance only matters if a real change still breaks the test: the mutation tests below move the injected
tokens by one layer, or swap two blocks' tokens, and require the same comparison to fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sensorium import PerceptualLM
from sensorium.config import WEIGHTS_NAME
from sensorium.encoders import load_encoder
from sensorium.injection import SlotInjector
from sensorium.lm import load_lm
from sensorium.recipe import TrainingOptions
from sensorium.train import build_optimizer

REFERENCE = Path(__file__).parent / "data" / "epalm-reference"
CASES = sorted(p.name for p in REFERENCE.iterdir())
QUESTIONS = ["what is the shape ?", "is there a red circle in the image ?", "color ?"]
TARGETS = ["circle", "yes", "red"]
# Of each tensor's largest magnitude. The tiny LMs (4 layers, width 32) compute each value in a chain of a few
# hundred float32 operations; summed in another order, each rounds by a few units of float32's 1.2e-7 and the
# chain grows them to at most 2e-6 of the tensor's scale (measured on AVX-512/AMX with 1 and 2 threads against
# the recording's one thread: loss 1e-7, gradients 2e-6). 1e-4 leaves 50 times that for other kernels, and is
# 30 times below the smallest real change measured: injecting one layer off or swapping two blocks' tokens moved
# the loss by 3e-3 to 0.18 of itself, and every gradient further.
FLOAT32_TOLERANCE = 1e-4


def restore(case: str, tiny_vit_folder: str) -> PerceptualLM:
    folder = REFERENCE / case
    lm, tokenizer = load_lm(str(folder / "lm"))
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    encoder = load_encoder(config["encoder"].replace("tiny-vit", tiny_vit_folder), num_frames=config["num_frames"])
    return PerceptualLM.from_pretrained(folder / "adapter", lm=lm, tokenizer=tokenizer, encoder=encoder)


def differs(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether ``actual`` is not ``expected``: another shape or dtype, or a value further than the tolerance."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return True
    bound = FLOAT32_TOLERANCE * float(expected.abs().max())
    return bool((actual - expected).abs().max() > bound)


def mismatches(model: PerceptualLM, case: str) -> list[str]:
    """The recorded outputs of ``case`` that ``model`` no longer reproduces, by name (empty: all of them)."""
    expected = load_file(REFERENCE / case / "expected.safetensors")
    generations = json.loads((REFERENCE / case / "generations.json").read_text())
    features = expected["features"]
    found = []

    model.eval()
    options = {"max_new_tokens": 6, "min_new_tokens": 3}
    computed = {"greedy": model.generate(features, QUESTIONS, **options),
                "beams": model.generate(features, QUESTIONS, num_beams=3, **options),
                "uncached": model.generate_uncached(features, QUESTIONS, **options)}
    found += [name for name, words in computed.items() if words != generations[name]]

    model.train()
    if differs(model.map_features(features).detach(), expected["mapped"]):
        found.append("mapped")
    loss = model(features, QUESTIONS, TARGETS)
    if differs(loss.detach(), expected["loss"]):
        found.append("loss")
    loss.backward()
    trained = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    recorded = {key.removeprefix("grad.") for key in expected if key.startswith("grad.")}
    if set(trained) != recorded:
        found.append("trainable parameters")
    found += [f"grad.{name}" for name in sorted(set(trained) & recorded)
              if differs(trained[name].grad, expected[f"grad.{name}"])]
    build_optimizer(model, TrainingOptions(lr=1e-2, prompt_lr=1e-2)).step()
    if differs(model(features, QUESTIONS, TARGETS).detach(), expected["loss_after_step"]):
        found.append("loss_after_step")
    return found


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_saved_epalm_adapters_compute_what_they_did(case, threads, tiny_vit_folder):
    torch.set_num_threads(threads)  # the conftest fixture restores the thread count
    assert mismatches(restore(case, tiny_vit_folder), case) == []


@pytest.mark.parametrize("case", CASES)
def test_saving_a_reference_adapter_writes_the_recorded_tensors(case, tiny_vit_folder, tmp_path):
    """Loading and saving copies tensors without arithmetic: names, shapes, dtypes and values are exact."""
    recorded = load_file(REFERENCE / case / "adapter" / WEIGHTS_NAME)
    restore(case, tiny_vit_folder).save_pretrained(tmp_path)
    saved = load_file(tmp_path / WEIGHTS_NAME)
    assert saved.keys() == recorded.keys()
    for name, tensor in recorded.items():
        assert saved[name].dtype == tensor.dtype and torch.equal(saved[name], tensor), name


def shift_layers(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Every injector writes each block's tokens ``step`` layers away from the configured one."""
    original = SlotInjector.__init__

    def shifted(self, lm, layers, offsets=(0,)):
        original(self, lm, [index + step for index in layers], offsets)

    monkeypatch.setattr(SlotInjector, "__init__", shifted)


def swap_first_two_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every injection writes the first block's tokens where the second's go, and the other way round."""
    original = SlotInjector.injecting

    def swapped(self, tokens, slots):
        order = [1, 0, *range(2, tokens.shape[1])]
        return original(self, tokens[:, order], slots)

    monkeypatch.setattr(SlotInjector, "injecting", swapped)


@pytest.mark.parametrize("mutate", [lambda patch: shift_layers(patch, -1), swap_first_two_blocks],
                         ids=["one-layer-earlier", "two-blocks-swapped"])
@pytest.mark.parametrize("case", CASES)
def test_the_tolerance_still_catches_a_misplaced_injection(case, mutate, tiny_vit_folder, monkeypatch):
    """The connector's tokens are unchanged (``mapped`` still matches): only where they enter the LM moves, and
    the loss, every gradient of the adapter and the loss after a step fall outside the tolerance.

    One layer earlier, not later: both recorded cases already inject into the LM's last layer."""
    mutate(monkeypatch)
    model = restore(case, tiny_vit_folder)
    found = mismatches(model, case)
    assert "mapped" not in found
    gradients = {f"grad.{name}" for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert {"greedy", "loss", "loss_after_step", *gradients} <= set(found), found
