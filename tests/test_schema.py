"""Adapter configs and recipes are declared schemas: every wrong field is one line naming the file and the field,
through the real command line, and training and ``--dry-run`` apply one batch rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import one_line_error, save_tiny_adapter
from PIL import Image

from sensorium import AdapterConfig
from sensorium.cli import main
from sensorium.config import CONFIG_NAME, WEIGHTS_NAME
from sensorium.recipe import Recipe, TrainingOptions, load_recipe


@pytest.fixture(scope="module")
def saved_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory):
    return Path(save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory.mktemp("adapter")))


@pytest.fixture
def adapter(saved_adapter, tmp_path):
    """A copy of a good adapter, to damage."""
    return shutil.copytree(saved_adapter, tmp_path / "adapter")


def edit_config(folder, **changes) -> None:
    path = folder / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("changes, message", [
    ({"num_blocks": "3"}, "num_blocks must be a number, not '3'"),
    ({"template": "{image}"}, "template: '{image}' has the placeholder {image}; a template may only hold {question}"),
    ({"template": "Question: {question} {"}, "is not a template"),
    ({"token_norm": "no"}, "token_norm must be true or false, not 'no'"),
    ({"inject_layers": [2, "3"]}, "inject_layers.1 must be a number, not '3'"),
    ({"prompt_length": -1}, "prompt_length must be >= 0, not -1"),
    ({"task": "translate"}, "task: unknown task 'translate'"),
    ({"colour": "red"}, "unknown adapter setting(s): colour"),
])
def test_wrong_adapter_config_fields_are_named(adapter, image, capsys, changes, message):
    edit_config(adapter, **changes)
    assert main(["ask", str(adapter), image, "what ?"]) == 2
    err = one_line_error(capsys)
    assert f"{adapter / CONFIG_NAME}: " in err and message in err


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "expected a mapping of adapter settings, not list [1, 2]"),
    (b'{"lm": "x",', "not valid JSON (Expecting"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_an_adapter_config_that_is_not_an_object_is_named(adapter, image, capsys, content, message):
    (adapter / CONFIG_NAME).write_bytes(content)
    assert main(["ask", str(adapter), image, "what ?"]) == 2
    err = one_line_error(capsys)
    assert f"{adapter / CONFIG_NAME}: " in err and message in err


def test_token_norm_false_still_loads(adapter):
    """The strict bool refuses 'no', not false."""
    edit_config(adapter, token_norm=False)
    assert AdapterConfig.load(adapter).token_norm is False


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],  # truncated
    lambda data: bytes(range(256)) * 4,  # random bytes
    lambda data: (2**40).to_bytes(8, "little") + data[8:],  # a header length beyond the file
    lambda data: data[:8] + b"{not json" + data[17:],  # a header that does not parse
])
@pytest.mark.parametrize("verb", ["ask", "serve"])
def test_corrupt_adapter_weights_are_named(adapter, image, capsys, damage, verb):
    weights = adapter / WEIGHTS_NAME
    weights.write_bytes(damage(weights.read_bytes()))
    command = (["ask", str(adapter), image, "what ?"] if verb == "ask"
               else ["serve", "--adapter", f"tiny={adapter}", "--port", "1"])  # refused before listening
    assert main(command) == 2
    assert f"{weights}: not a readable safetensors file" in one_line_error(capsys)


# ---- recipes --------------------------------------------------------------------------------
def write_recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("training, message", [
    ({"batch_size": 0}, "training.batch_size must be >= 1, not 0"),
    ({"max_steps": -5}, "training.max_steps must be >= 1, not -5"),
    ({"max_steps": "5"}, "training.max_steps must be a number, not '5'"),
    ({"lr": "fast"}, "training.lr must be a number, not 'fast'"),
    ({"lr": float("nan")}, "training.lr must be >= 1e-12, not nan"),
    ({"prompt_lr": float("inf")}, "training.prompt_lr must be <= 1000.0, not inf"),
    ({"blind": "yes"}, "training.blind must be true or false, not 'yes'"),
    ({"mixed_precision": False}, "training.mixed_precision 'False' not one of 'auto', 'no', 'fp16' or 'bf16' "
                                 "(YAML reads a bare yes/no/on/off as true/false: quote it)"),
    ({"learning_rate": 1}, "unknown training option(s): learning_rate"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_wrong_recipe_fields_are_named_by_train_and_dry_run(tmp_path, capsys, training, message, dry_run):
    recipe = write_recipe(tmp_path, yaml.safe_dump({"training": training}))
    code = main(["train", recipe, *(["--dry-run"] if dry_run else [])])
    assert code == 2
    if dry_run:  # the dry run reports every finding; the recipe's is the one error
        out = capsys.readouterr().out
        assert message in out and "recipe INVALID: 1 error(s)" in out
    else:
        err = one_line_error(capsys)
        assert f"{recipe}: " in err and message in err


@pytest.mark.parametrize("text, message", [
    ("training: {batch_size: 4\n", "not valid YAML (expected ',' or '}', but got '<stream end>' at line 2, column 1)"),
    ("- model\n- data\n", "a recipe is a mapping of sections (model, data, training, generation, ...), not a list"),
    ("just a sentence\n", "a recipe is a mapping of sections"),
    ("model: [1, 2]\n", "model: expected a mapping of adapter settings, not list [1, 2]"),
    ("model:\n  num_blocks: '3'\n  template: '{image}'\n",
     "model.num_blocks must be a number, not '3'; model.template: '{image}' has the placeholder {image}"),
    ("when: 2024-13-45\n", "not valid YAML (month must be in 1..12)"),
])
def test_recipe_files_that_are_not_recipes_are_named(tmp_path, capsys, text, message):
    recipe = write_recipe(tmp_path, text)
    assert main(["train", recipe]) == 2
    err = one_line_error(capsys)
    assert f"{recipe}: " in err and message in err


def test_an_override_into_a_value_is_named(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "out: runs/x\n")
    assert main(["train", recipe, "out.deeper=1"]) == 2
    assert "override 'out.deeper=1': out is not a section" in one_line_error(capsys)


def test_yaml_numbers_written_as_strings_still_load(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, "training:\n  lr: 3e-4\n  prompt_lr: '1e-2'\n  weight_decay: 0\n"))
    assert (recipe.training.lr, recipe.training.prompt_lr, recipe.training.weight_decay) == (3e-4, 1e-2, 0.0)
    assert recipe.to_dict()["training"]["lr"] == 3e-4


def test_defaults_and_round_trips_are_unchanged(tmp_path):
    recipe = Recipe.from_dict({})
    assert recipe.training == TrainingOptions() and recipe.model == AdapterConfig()
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    config = AdapterConfig(task="caption", num_blocks=3)
    config.save(tmp_path)
    assert AdapterConfig.load(tmp_path) == config and config.template == "A picture of"
    assert TrainingOptions.lr == 1e-3  # class defaults stay readable, as the comparison file reader reads them


# ---- the batch rule: one statement, asked by training and by the dry run ------------------
@pytest.mark.parametrize("batch, accumulation, processes, micro", [(32, 1, 1, 32), (32, 4, 2, 4), (8, 2, 4, 1)])
def test_micro_batch_of_a_global_batch(batch, accumulation, processes, micro):
    options = TrainingOptions(batch_size=batch, gradient_accumulation=accumulation)
    assert options.micro_batch_size(processes) == micro


def test_dry_run_refuses_what_training_refuses(tiny_lm_folder, tiny_vit_folder, tmp_path, capsys, monkeypatch):
    """batch 4 over 4 processes with accumulation 4: the dry run used to check batch % processes only."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "train.jsonl").write_text(json.dumps({"media": "a.png", "question": "q ?", "answers": ["a"]}) + "\n")
    values = {"model": {"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 2},
              "data": {"train": {"format": "jsonl", "path": str(tmp_path / "train.jsonl")}},
              "training": {"batch_size": 4, "gradient_accumulation": 4, "max_steps": 10}}
    recipe = write_recipe(tmp_path, yaml.safe_dump(values))
    with pytest.raises(ValueError) as training_refuses:
        TrainingOptions(**values["training"]).micro_batch_size(4)
    assert main(["train", recipe, "--dry-run", "--num-processes", "4"]) == 2
    assert str(training_refuses.value) in capsys.readouterr().out
    assert main(["train", recipe, "--dry-run", "--num-processes", "1"]) == 0
    out = capsys.readouterr().out
    assert "gradient accumulation 4: 1 examples per process per micro-step" in out
    assert "10 steps, one optimizer update each" in out and "optimizer updates" not in out


def test_an_unknown_key_of_line_breaks_is_quoted_on_the_one_line(tmp_path, capsys):
    """Found by fuzzing: a recipe key '\\n' printed the error over two lines."""
    path = tmp_path / "recipe.yaml"
    path.write_text('"\\n": 1\n')
    assert main(["train", str(path)]) == 2
    assert one_line_error(capsys).endswith("unknown recipe section(s): '\\n'")
