"""`sensorium import-epalm`: checkpoints in the official key layout, written here as accelerate_training/vqa.py saves
them (its 'model', 'optimizer', 'lr_scheduler', 'config', 'epoch', ...), become adapters that ask and serve; every
malformed checkpoint or config is one line naming the file and the key, exit code 2."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from conftest import one_line_error
from PIL import Image
from safetensors.torch import load_file
from test_paper_layout import OFFICIAL_CONFIGS

from sensorium import load
from sensorium.cli import main
from sensorium.config import CONFIG_NAME, WEIGHTS_NAME
from sensorium.errors import BadInputError
from sensorium.import_epalm import DEFAULT_ENCODER, adapter_config, read_official_config
from sensorium.serve.app import create_app, load_registry, running_server
from sensorium.serve.settings import ServeSettings

# What both official image VQA configs (configs/image/ePALM_vqa.yaml, ePALM_pt_L_vqa.yaml) hold, the layer range
# scaled to the tiny 4-layer OPT and 2 of the tiny ViT's 4 blocks; the keys that change no tensor stay, to be
# ignored.
COMMON = {
    "image_res": 224, "batch_size_train": 64, "batch_size_test": 64, "k_test": 64, "warm_up": True,
    "optimizer": {"opt": "adamW", "lr": 2e-5, "weight_decay": 0.02, "prompt_lr": 1e-5},
    "schedular": {"sched": "cosine", "lr": 2e-5, "epochs": 8, "min_lr": 1e-6, "warmup_epochs": 4},
    "use_vis_prefix": True, "start_layer_idx": 1, "end_layer_idx": 3, "injected_hidden_states": 2,
    "lm_loss_weight": 0.1, "unfreeze_text_layer_norm": False, "unfreeze_vision_layer_norm": False,
    "num_workers": 4, "special_answer_token": "</a>", "replace_added_tokens": True, "use_cache": False,
    "connector_per_text_layer": False, "text_step": 1, "num_beams": 3, "do_sample": False, "prompt_tuning": True,
    "prompt_len": 10,
}
OFFICIAL_YAML = {
    "ePALM_vqa": COMMON,  # one linear per block; mlp absent: the official default, an MLP-made prompt
    "ePALM_pt_L_vqa": {**COMMON, "shared_connector": True, "mlp": False, "train_split": "train_standard"},
}
WIDTH = 32  # the tiny OPT's layers and embeddings, and the tiny ViT's tokens


def official_tensors(values: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """models/epalm.py's trained tensors under their state_dict names: connector.{i} (Linear(vit, lm)), then
    prompt_module.prefix_embedding (Embedding, Linear, Tanh, Linear when mlp)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(1 if values.get("shared_connector") else values["injected_hidden_states"]):
        tensors[f"connector.{i}.weight"] = torch.randn(WIDTH, WIDTH, generator=generator)
        tensors[f"connector.{i}.bias"] = torch.randn(WIDTH, generator=generator)
    tensors["prompt_module.prefix_embedding.0.weight"] = torch.randn(values["prompt_len"], WIDTH, generator=generator)
    if values.get("mlp", True):
        for index in (1, 3):
            tensors[f"prompt_module.prefix_embedding.{index}.weight"] = torch.randn(WIDTH, WIDTH, generator=generator)
            tensors[f"prompt_module.prefix_embedding.{index}.bias"] = torch.randn(WIDTH, generator=generator)
    return tensors


def save_official(path: Path, tensors: dict, values: dict, **extra) -> Path:
    """torch.save of what the official script saves, an AdamW state over the tensors included."""
    parameters = [torch.nn.Parameter(t.clone()) for t in tensors.values()
                  if isinstance(t, torch.Tensor) and t.is_floating_point()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    torch.save({"model": tensors, "optimizer": optimizer.state_dict(), "lr_scheduler": {"t_initial": 8},
                "config": values, "epoch": 3, "best_valid": 0.5, "best_epoch": 3, **extra}, path)
    return path


def save_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def import_args(checkpoint: Path, config: Path, out: Path, lm: str, vit: str, *more: str) -> list[str]:
    return ["import-epalm", str(checkpoint), "--config", str(config), "--out", str(out), "--lm", lm,
            "--encoder", vit, *more]


@pytest.fixture(scope="module", params=sorted(OFFICIAL_YAML))
def imported(request, tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> tuple[str, dict, Path]:
    """(official config name, the checkpoint's tensors, the imported adapter's folder)."""
    name, folder = request.param, tmp_path_factory.mktemp(f"official-{request.param}")
    values, tensors = OFFICIAL_YAML[name], official_tensors(OFFICIAL_YAML[name])
    checkpoint = save_official(folder / "checkpoint_best.pth", tensors, values)
    out = folder / "adapter"
    assert main(import_args(checkpoint, save_yaml(folder / f"{name}.yaml", values), out,
                            tiny_lm_folder("opt"), tiny_vit_folder)) == 0
    return name, tensors, out


def test_the_adapter_holds_the_checkpoint_tensors(imported):
    name, tensors, out = imported
    state = load_file(out / WEIGHTS_NAME)
    ours = {"prompt_module.prefix_embedding.0.weight": "prompt", "prompt_module.prefix_embedding.1.weight":
            "prompt_mlp.0.weight", "prompt_module.prefix_embedding.1.bias": "prompt_mlp.0.bias",
            "prompt_module.prefix_embedding.3.weight": "prompt_mlp.2.weight",
            "prompt_module.prefix_embedding.3.bias": "prompt_mlp.2.bias"}
    shared = OFFICIAL_YAML[name].get("shared_connector", False)
    for i in range(2):
        for kind in ("weight", "bias"):
            ours[f"connector.{i}.{kind}"] = f"connector.linear.{kind}" if shared else f"connector.linears.{i}.{kind}"
    assert set(state) == {ours[key] for key in tensors}
    for key, tensor in tensors.items():
        assert torch.equal(state[ours[key]], tensor), key


def test_the_adapter_has_the_settings_of_its_official_config(imported):
    name, _, out = imported
    config = json.loads((out / CONFIG_NAME).read_text())
    # The settings under which tests/test_paper_layout.py matches the official forward.
    assert {key: config[key] for key in OFFICIAL_CONFIGS[name]} == OFFICIAL_CONFIGS[name]
    assert {key: config[key] for key in ("layout", "connector", "encoder_norm", "token_norm", "loss", "lm_dropout",
                                         "task", "template", "num_blocks", "inject_layers", "prompt_length")} == {
        "layout": "paper", "connector": "epalm", "encoder_norm": True, "token_norm": False, "loss": "text",
        "lm_dropout": True, "task": "vqa", "template": "{question}?</a>", "num_blocks": 2, "inject_layers": [1, 2],
        "prompt_length": 10}
    assert config["generation"] == {"num_beams": 3, "use_cache": False}


def test_ask_answers_with_the_imported_adapter(imported, image, capsys):
    _, _, out = imported
    capsys.readouterr()
    assert main(["ask", str(out), image, "what color is the shape"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [load(out).ask([image], ["what color is the shape"])[0]]


def test_eval_scores_the_imported_adapter(imported, image, tmp_path):
    _, _, out = imported
    manifest, predictions = tmp_path / "questions.jsonl", tmp_path / "predictions.jsonl"
    manifest.write_text(json.dumps({"media": image, "question": "what color is the shape", "answers": ["blue"],
                                    "answer_type": "other"}) + "\n")
    assert main(["eval", str(out), "--data", str(manifest), "--predictions", str(predictions)]) == 0
    record = json.loads(predictions.read_text())
    assert record["prediction"] == load(out).ask([image], ["what color is the shape"])[0]


def test_the_server_answers_with_the_imported_adapter(imported):
    _, _, out = imported
    registry = load_registry([("epalm", out)])
    picture = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(picture, format="PNG")
    with running_server(create_app(registry, ServeSettings())) as url:
        response = httpx.post(f"{url}/v1/ask", data={"adapter": "epalm", "question": "what color is the shape"},
                              files={"media": ("red.png", picture.getvalue(), "image/png")}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = registry.get("epalm").model.ask([Image.open(picture).convert("RGB")], ["what color is the shape"])
    assert (body["adapter"], body["task"], body["answer"]) == ("epalm", "vqa", expected[0])


# ---- refused, in one line naming the file and the key ----------------------------------------------------------


def _without(tensors: dict, key: str) -> dict:
    return {name: tensor for name, tensor in tensors.items() if name != key}


BROKEN_TENSORS = {
    "wrong shape": (lambda t: {**t, "connector.1.weight": torch.zeros(WIDTH, 16)},
                    "'connector.1.weight' has shape [32, 16], the model expects [32, 32]"),
    "missing key": (lambda t: _without(t, "prompt_module.prefix_embedding.3.bias"),
                    "lacks 'prompt_module.prefix_embedding.3.bias'"),
    "unknown key": (lambda t: {**t, "logit_scale": torch.ones(1)}, "holds 'logit_scale'"),
    "integer tensor": (lambda t: {**t, "connector.0.bias": torch.zeros(WIDTH, dtype=torch.int64)},
                       "'connector.0.bias' is torch.int64, not floating point"),
    "NaN": (lambda t: {**t, "prompt_module.prefix_embedding.0.weight": torch.full((10, WIDTH), float("nan"))},
            "'prompt_module.prefix_embedding.0.weight' holds NaN"),
    "not a tensor": (lambda t: {**t, "connector.0.bias": [0.0] * WIDTH}, "list under 'connector.0.bias'"),
    "adapter layers": (lambda t: {**t, "transformer.0.fc2.1.adapter.0.weight": torch.ones(2, 2)},
                       "'transformer.0.fc2.1.adapter.0.weight' belongs to adapter layers"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TENSORS))
def test_broken_checkpoint_tensors_are_refused(case, tiny_lm_folder, tiny_vit_folder, tmp_path, capsys):
    change, reason = BROKEN_TENSORS[case]
    values = OFFICIAL_YAML["ePALM_vqa"]
    checkpoint = save_official(tmp_path / "checkpoint.pth", change(official_tensors(values)), values)
    out = tmp_path / "adapter"
    assert main(import_args(checkpoint, save_yaml(tmp_path / "c.yaml", values), out, tiny_lm_folder("opt"),
                            tiny_vit_folder)) == 2
    error = one_line_error(capsys)
    assert str(checkpoint) in error and reason in error, error
    assert not out.exists()


def test_a_pickled_object_is_refused_by_weights_only(tiny_lm_folder, tiny_vit_folder, tmp_path, capsys):
    # Training scripts often save their argparse namespace beside the tensors; unpickling it would run its class.
    values = OFFICIAL_YAML["ePALM_vqa"]
    checkpoint = save_official(tmp_path / "checkpoint.pth", official_tensors(values), values,
                               args=argparse.Namespace(text_model="facebook/opt-2.7b"))
    assert main(import_args(checkpoint, save_yaml(tmp_path / "c.yaml", values), tmp_path / "adapter",
                            tiny_lm_folder("opt"), tiny_vit_folder)) == 2
    error = one_line_error(capsys)
    assert str(checkpoint) in error and "weights_only=True" in error and "argparse.Namespace" in error, error


BROKEN_FILES = {
    "not a checkpoint": (lambda path: path.write_bytes(b"PK\x03\x04 not really a zip"), "not a PyTorch checkpoint"),
    "no model": (lambda path: torch.save({"epoch": 3}, path), "no 'model' mapping"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_files_that_are_not_official_checkpoints_are_refused(case, tmp_path, capsys):
    write, reason = BROKEN_FILES[case]
    checkpoint = tmp_path / "checkpoint.pth"
    write(checkpoint)
    config = save_yaml(tmp_path / "c.yaml", OFFICIAL_YAML["ePALM_vqa"])
    assert main(import_args(checkpoint, config, tmp_path / "adapter", "lm", "vit")) == 2
    error = one_line_error(capsys)
    assert str(checkpoint) in error and reason in error, error


BROKEN_CONFIGS = {
    "unsupported option": ({"deep": True}, "deep: True is not supported (it needs a soft prompt at every LM layer)"),
    "wrong type": ({"injected_hidden_states": "6"}, "injected_hidden_states must be a number"),
    "empty range": ({"end_layer_idx": 1}, "end_layer_idx (1) must be above start_layer_idx (1)"),
    "missing range": ({"start_layer_idx": None}, "start_layer_idx"),
    "another answer token": ({"special_answer_token": "<ans>"}, "special_answer_token '<ans>'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_configs_this_import_cannot_reproduce_are_refused(case, tmp_path, capsys):
    change, reason = BROKEN_CONFIGS[case]
    values = {key: value for key, value in {**OFFICIAL_YAML["ePALM_vqa"], **change}.items() if value is not None}
    config = save_yaml(tmp_path / "c.yaml", values)
    checkpoint = save_official(tmp_path / "checkpoint.pth", official_tensors(OFFICIAL_YAML["ePALM_vqa"]), values)
    assert main(import_args(checkpoint, config, tmp_path / "adapter", "lm", "vit")) == 2
    error = one_line_error(capsys)
    assert str(config) in error and reason in error, error


def test_a_config_other_than_the_one_recorded_is_refused(tmp_path, capsys):
    # Another layer range would load without a shape error and compute another function.
    recorded = OFFICIAL_YAML["ePALM_vqa"]
    checkpoint = save_official(tmp_path / "checkpoint.pth", official_tensors(recorded), recorded)
    config = save_yaml(tmp_path / "c.yaml", {**recorded, "start_layer_idx": 0})
    assert main(import_args(checkpoint, config, tmp_path / "adapter", "lm", "vit")) == 2
    error = one_line_error(capsys)
    assert str(checkpoint) in error and "start_layer_idx: 1" in error and str(config) in error, error


def test_a_filled_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "notes.txt").write_text("mine")
    assert main(import_args(tmp_path / "checkpoint.pth", tmp_path / "c.yaml", tmp_path / "adapter", "lm", "vit")) == 2
    assert "already exists and is not empty" in one_line_error(capsys)


def test_the_encoder_defaults_to_the_official_vit_and_the_task_to_the_config(tmp_path):
    caption = {key: value for key, value in COMMON.items() if key != "special_answer_token"}
    official, _ = read_official_config(save_yaml(tmp_path / "caption.yaml", caption))
    settings = adapter_config(official, tmp_path / "caption.yaml", "facebook/opt-2.7b", None, None)
    assert (settings.encoder, settings.task, settings.template) == (DEFAULT_ENCODER, "caption", "")
    video, _ = read_official_config(save_yaml(tmp_path / "video.yaml", {**COMMON, "vision_model_name": "timesformer"}))
    with pytest.raises(BadInputError, match="vision_model_name 'timesformer': name that encoder with --encoder"):
        adapter_config(video, tmp_path / "video.yaml", "facebook/opt-2.7b", None, None)
