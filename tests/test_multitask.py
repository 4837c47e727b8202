"""A multitask adapter: questions and captions learned together, the input saying which task (a question or none)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_line_error, save_steered_adapter
from fastapi.testclient import TestClient
from PIL import Image

from sensorium import AdapterConfig, PerceptualLM
from sensorium import train as training
from sensorium.cli import main
from sensorium.config import TASKS
from sensorium.data import write_manifest
from sensorium.recipe import Recipe
from sensorium.serve.app import create_app, load_registry
from sensorium.testing import colour_squares


def multitask_config(tiny_lm_folder, tiny_vit_folder, **settings) -> AdapterConfig:
    return AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=3, inject_layers=[1, 2, 3],
                         task="multitask", **settings)


@pytest.fixture(scope="module")
def multitask_folder(tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> str:
    return save_steered_adapter(multitask_config(tiny_lm_folder, tiny_vit_folder), 3,
                                tmp_path_factory.mktemp("multitask"))


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> dict[str, str]:
    """Manifests of the colour squares: training and test, questions and captions apart."""
    folder = tmp_path_factory.mktemp("squares")
    manifests = {}
    for task in ("vqa", "caption"):
        training_set, test = colour_squares(folder / task, task)
        for split, examples in (("train", training_set), ("test", test)):
            manifests[f"{task}-{split}"] = write_manifest(examples, folder / f"{task}-{split}.jsonl")["path"]
    return manifests


def test_the_input_says_the_task(tiny_lm_folder, tiny_vit_folder):
    config = multitask_config(tiny_lm_folder, tiny_vit_folder, generation={"vqa": {"max_new_tokens": 3}})
    assert config.does("vqa") and config.does("caption")
    assert config.task_of(["what colour?", "and this?"]) == "vqa" and config.task_of(["", ""]) == "caption"
    assert config.prompt_text("what colour?") == TASKS["vqa"]["template"].format(question="what colour?")
    assert config.prompt_text("") == TASKS["caption"]["template"]
    assert config.generation_defaults("vqa")["max_new_tokens"] == 3  # its own options, per task
    assert config.generation_defaults("caption") == TASKS["caption"]["generation"]
    with pytest.raises(ValueError, match="separate calls"):
        config.task_of(["what colour?", ""])
    single = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, task="vqa")
    assert single.does("vqa") and not single.does("caption")
    assert single.prompt_text("") == "Question:  Answer:"  # a single-task adapter keeps its one template


def test_options_of_a_multitask_adapter_come_per_task(tiny_lm_folder, tiny_vit_folder):
    with pytest.raises(ValueError, match="options are given per task"):
        multitask_config(tiny_lm_folder, tiny_vit_folder, generation={"max_new_tokens": 3})
    with pytest.raises(ValueError, match="options are given per task"):
        Recipe.from_dict({"model": {"task": "multitask"}, "generation": {"num_beams": 2}})


def test_a_multitask_adapter_asks_and_captions(multitask_folder, tiny_vit_folder):
    model = PerceptualLM.from_pretrained(multitask_folder).eval()
    image = Image.new("RGB", (32, 32), (0, 0, 255))
    features = model.encode([image])
    assert model.ask([image], ["what colour is it?"]) == model.generate(features, ["what colour is it?"])
    assert model.caption([image]) == model.generate(features, [""])
    # Each call decodes as its task does: three beams and thirty tokens for a caption, greedy for a question.
    assert model.generation_options([""])["num_beams"] == TASKS["caption"]["generation"]["num_beams"]
    assert model.generation_options(["what?"])["num_beams"] == TASKS["vqa"]["generation"]["num_beams"]
    caption_prompt = model.tokenizer(TASKS["caption"]["template"], add_special_tokens=False).input_ids
    assert model.prompt_ids([""]) == [caption_prompt]


def test_multitask_training_learns_both_and_scores_each(tiny_lm_folder, tiny_vit_folder, squares, tmp_path):
    recipe = Recipe.from_dict({
        "model": {"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 3,
                  "inject_layers": [1, 2, 3], "task": "multitask"},
        "data": {"train": [{"format": "jsonl", "path": squares["vqa-train"]},
                           {"format": "jsonl", "path": squares["caption-train"]}],
                 "eval": [{"format": "jsonl", "path": squares["vqa-test"]},
                          {"format": "jsonl", "path": squares["caption-test"]}]},
        "training": {"batch_size": 4, "max_steps": 3, "warmup_steps": 1, "mixed_precision": "no",
                     "cache_workers": 0, "eval_every": 3, "quick_eval_size": 4},
        "generation": {"vqa": {"max_new_tokens": 2}, "caption": {"max_new_tokens": 4, "num_beams": 1}},
        "out": str(tmp_path / "run"),
    })
    summary = training.train(recipe)
    assert "accuracy" in summary and "CIDEr" in summary["caption_scores"]
    assert summary["eval_questions"] == 8  # four questions and four captions
    answers = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    captions = json.loads((tmp_path / "run" / "captions_results.json").read_text())
    assert len(answers) == 4 and len(captions) == 4
    assert all(record["question"] for record in answers)
    # The saved adapter answers both tasks as scored: its caption decoding is the recipe's.
    model = PerceptualLM.from_pretrained(tmp_path / "run" / "adapter")
    assert model.config.generation_defaults("caption")["max_new_tokens"] == 4
    assert model.config.generation_defaults("vqa")["max_new_tokens"] == 2


def test_a_single_task_recipe_refuses_the_other_tasks_data(tiny_lm_folder, tiny_vit_folder, squares, tmp_path):
    recipe = Recipe.from_dict({
        "model": {"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 3,
                  "inject_layers": [1, 2, 3], "task": "vqa"},
        "data": {"train": [{"format": "jsonl", "path": squares["vqa-train"]},
                           {"format": "jsonl", "path": squares["caption-train"]}]},
        "training": {"batch_size": 2, "max_steps": 1, "mixed_precision": "no", "cache_workers": 0},
        "out": str(tmp_path / "run"),
    })
    with pytest.raises(ValueError, match="holds caption examples, which a vqa adapter does not learn"):
        training.train(recipe)


def test_eval_scores_each_task_and_refuses_data_the_adapter_does_not_do(multitask_folder, tiny_adapter_folders,
                                                                      squares, tmp_path, capsys):
    out = tmp_path / "captions.json"
    assert main(["eval", multitask_folder, "--data", squares["caption-test"], "--predictions", str(out)]) == 0
    assert "CIDEr" in capsys.readouterr().out and len(json.loads(out.read_text())) == 4
    assert main(["eval", multitask_folder, "--data", squares["vqa-test"], "--predictions",
                 str(tmp_path / "answers.jsonl")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", tiny_adapter_folders["shapes"], "--data", squares["caption-test"]]) != 0
    assert "a vqa adapter scored on caption data" in one_line_error(capsys)


def test_the_server_asks_and_captions_with_one_multitask_adapter(multitask_folder):
    registry = load_registry([("both", multitask_folder)])
    model = registry.get("both").model
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    upload = {"media": ("red.png", _png(image), "image/png")}
    with TestClient(create_app(registry)) as client:
        asked = client.post("/v1/ask", data={"adapter": "both", "question": "what colour?"}, files=upload)
        captioned = client.post("/v1/caption", data={"adapter": "both"}, files=upload)
        listed = client.get("/v1/adapters").json()
    assert asked.status_code == 200 and captioned.status_code == 200, (asked.text, captioned.text)
    with torch.inference_mode():
        assert asked.json()["answer"] == model.ask([image], ["what colour?"])[0]
        assert captioned.json()["answer"] == model.caption([image])[0]
    assert listed[0]["task"] == "multitask"


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
