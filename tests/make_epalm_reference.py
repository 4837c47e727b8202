"""Writes tests/data/epalm-reference: eP-ALM adapters and what they compute, for tests/test_epalm_reference.py.

Each case saves a tiny frozen LM (float16 on disk, so the folder stays small; it loads as float32), an adapter
made by the code of the commit that ran this script, random encoder features, and what that code computed
from them: the mapped tokens, the loss and its gradients, the loss after one AdamW step, and the greedy,
beam-search and uncached generations. The tests recompute all of it with the current code and require the
generations exactly and the numbers within float32 rounding (tests/test_epalm_reference.py), so that a change in
the model leaves every adapter trained before it computing what it did.

Run from the repository root, with one thread (as the recording was made): ``OMP_NUM_THREADS=1 PYTHONPATH=src:tests
python tests/make_epalm_reference.py``. Only rerun it to record a deliberate change of the numbers.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from sensorium import AdapterConfig, PerceptualLM
from sensorium.lm import load_lm
from sensorium.recipe import TrainingOptions
from sensorium.testing import make_tokenizer, save_tiny_vit, tiny_config
from sensorium.train import build_optimizer

FOLDER = Path(__file__).parent / "data" / "epalm-reference"
QUESTIONS = ["what is the shape ?", "is there a red circle in the image ?", "color ?"]
TARGETS = ["circle", "yes", "red"]
# name -> LM architecture, video frames per clip (None: images), adapter settings
CASES = {
    "llama-image": ("llama", None, {"num_blocks": 3, "inject_layers": [1, 2, 3], "prompt_length": 2}),
    "opt-frames": ("opt", 3, {"num_blocks": 2, "inject_layers": [2, 3], "prompt_length": 1, "temporal": "frames"}),
}


def save_lm(arch: str, folder: Path) -> None:
    tokenizer = make_tokenizer(with_bos=arch.startswith("opt"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer))).half().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build(arch: str, frames: int | None, settings: dict, vit: str, folder: Path) -> PerceptualLM:
    encoder = f"frames:{vit}" if frames else vit
    config = AdapterConfig(lm="lm", encoder=encoder, num_frames=frames, **settings)
    lm, tokenizer = load_lm(str(folder / "lm"))
    torch.manual_seed(1)
    model = PerceptualLM(config, lm=lm, tokenizer=tokenizer)
    with torch.no_grad():  # strong random weights, so that every part visibly steers the outputs
        model.connector.linear.weight.normal_(0, 2.0)
        model.prompt.normal_(0, 1.0)
        if frames:
            model.connector.frame_position.normal_(0, 2.0)
    return model


def record(model: PerceptualLM, folder: Path) -> None:
    frames = [] if model.encoder.num_tokens is None else [model.encoder.num_tokens]
    features = torch.randn(len(QUESTIONS), model.encoder.num_blocks, *frames, model.encoder.dim,
                           generator=torch.Generator().manual_seed(0))
    model.eval()
    options = {"max_new_tokens": 6, "min_new_tokens": 3}
    generations = {"greedy": model.generate(features, QUESTIONS, **options),
                   "beams": model.generate(features, QUESTIONS, num_beams=3, **options),
                   "uncached": model.generate_uncached(features, QUESTIONS, **options)}
    model.train()
    tensors = {"features": features, "mapped": model.map_features(features).detach()}
    loss = model(features, QUESTIONS, TARGETS)
    loss.backward()
    tensors["loss"] = loss.detach()
    tensors.update({f"grad.{name}": p.grad for name, p in model.named_parameters() if p.requires_grad})
    optimizer = build_optimizer(model, TrainingOptions(lr=1e-2, prompt_lr=1e-2))
    optimizer.step()
    tensors["loss_after_step"] = model(features, QUESTIONS, TARGETS).detach()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "expected.safetensors"))
    (folder / "generations.json").write_text(json.dumps(generations, indent=2) + "\n")


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        vit = save_tiny_vit(Path(scratch) / "vit")
        for name, (arch, frames, settings) in CASES.items():
            folder = FOLDER / name
            save_lm(arch, folder / "lm")
            model = build(arch, frames, settings, vit, folder)
            # The encoder is handed to the model in the test; a scratch path in the config would be noise.
            model.config.encoder = model.config.encoder.replace(vit, "tiny-vit")
            model.save_pretrained(folder / "adapter")
            record(model, folder)
            print(f"{name}: written to {folder}")


if __name__ == "__main__":
    main()
