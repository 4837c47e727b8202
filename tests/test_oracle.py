"""The text oracle: the truth behind each medium, stated as text before the prompt, with the image zeroed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from sensorium import PerceptualLM
from sensorium import train as training
from sensorium.benchmarks.scenes import describe, make_scenes
from sensorium.cli import main
from sensorium.data import Example, easyvqa, read_dataset, write_manifest
from sensorium.oracle import truths, with_truth
from sensorium.recipe import Recipe


@pytest.mark.parametrize(("shape", "color"), [("circle", "teal"), ("triangle", "red"), ("rectangle", "gray")])
def test_pixels_give_the_colour_and_the_shape(shape, color, tmp_path):
    image = Image.new("RGB", (64, 64), (236, 244, 250))
    draw, rgb, box = ImageDraw.Draw(image), easyvqa.COLORS[color], (10, 14, 50, 54)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(10, 54), (50, 54), (30, 14)], fill=rgb)
    else:
        draw.rectangle(box, fill=rgb)
    image.save(tmp_path / "shape.png")
    assert easyvqa.content(tmp_path / "shape.png") == (color, shape)


def test_easy_vqa_truths_agree_with_every_answer():
    described = easyvqa.truths("test")
    examples = read_dataset({"format": "easy-vqa", "split": "test"})
    assert set(described) == {e.media for e in examples}
    assert {Path(e.media).resolve().parent for e in examples} == {easyvqa.images_folder("test")}
    for example in examples:
        color, shape = described[example.media].split()[1:]
        answer = example.answers[0]
        words = example.question.rstrip("?").split()
        if answer in ("yes", "no"):
            named = [w for w in words if w in easyvqa.COLORS or w in easyvqa.SHAPES][0]
            negated = "not" in words or "no" in words
            assert (named in (color, shape)) == ((answer == "yes") != negated), (example.question, answer, color)
        else:
            assert answer in (color, shape), (example.question, answer, described[example.media])


def test_a_scene_is_described_with_its_objects_and_their_relations():
    plan = {"objects": [
        {"shape": "circle", "color": "red", "size": "large", "texture": "striped", "bbox": [10, 100, 40, 40]},
        {"shape": "star", "color": "blue", "size": "small", "texture": "plain", "bbox": [150, 104, 30, 30]},
    ]}
    assert describe(plan) == "a large striped red circle and a small blue star; " \
                             "the red circle is to the left of the blue star"


def test_generated_scenes_have_a_truth_for_every_image(tmp_path):
    make_scenes(tmp_path / "scenes", n_train=3, n_test=2, seed=0)
    spec = {"format": "vqav2", "questions": str(tmp_path / "scenes" / "questions_test.json"),
            "annotations": str(tmp_path / "scenes" / "annotations_test.json"),
            "images": str(tmp_path / "scenes" / "images")}
    examples = with_truth(read_dataset(spec))
    plans = json.loads((tmp_path / "scenes" / "scenes_test.json").read_text())["scenes"]
    assert len(truths(e.media for e in examples)) == 3 + 2 + 2  # every split's scenes share the images folder
    for example in examples:
        context = example.extra["context"]
        assert context.startswith("The image shows ")
        objects = next(p["objects"] for p in plans if example.media.endswith(p["file_name"]))
        assert all(f"{o['color']} {o['shape']}" in context for o in objects)


def test_a_manifest_of_known_media_keeps_their_truths(tmp_path):
    """A validation split or any manifest over easy-vqa's images gets the same text as the benchmark's spec."""
    examples = read_dataset({"format": "easy-vqa", "split": "train", "limit": 40})
    spec = write_manifest(examples, tmp_path / "held-out.jsonl")
    from_manifest = {e.question_id: e.extra["context"] for e in with_truth(read_dataset(spec))}
    assert from_manifest == {e.question_id: e.extra["context"] for e in with_truth(examples)}


def test_media_without_a_known_truth_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    spec = write_manifest([Example(media=str(tmp_path / "photo.png"), question="what is it?", answers=["a cat"],
                                   answer_type="other", question_id="0")], tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match=r"no known content for 1 file\(s\), e.g. .*photo.png"):
        with_truth(read_dataset(spec))


def test_context_text_comes_before_the_template(tiny_lm_folder, tiny_vit_folder):
    from sensorium import AdapterConfig

    model = PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=2,
                                       inject_layers=[2, 3]))
    with_context, plain = model.prompt_ids(["color ?"] * 2, ["The image shows a red circle.", ""])
    expected = model.tokenizer("The image shows a red circle. Question: color ? Answer:",
                               add_special_tokens=False).input_ids
    assert with_context == expected
    assert plain == model.prompt_ids(["color ?"])[0]


def test_an_oracle_run_sees_the_truth_and_no_image(tiny_lm_folder, tiny_vit_folder, tmp_path, monkeypatch):
    recipe = Recipe.from_dict({
        "model": {"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 2, "inject_layers": [2, 3]},
        "data": {"train": {"format": "easy-vqa", "split": "train", "limit": 8},
                 "eval": {"format": "easy-vqa", "split": "test", "limit": 6}},
        "training": {"batch_size": 4, "max_steps": 2, "warmup_steps": 1, "mixed_precision": "no", "oracle": True,
                     "cache_workers": 0},
        "generation": {"max_new_tokens": 3}, "out": str(tmp_path / "run"),
    })
    seen = []
    original = PerceptualLM.prompt_ids

    def spy(self, questions, contexts=None):
        seen.append(contexts)
        return original(self, questions, contexts)

    zeroed = []
    forward = PerceptualLM.forward
    monkeypatch.setattr(PerceptualLM, "prompt_ids", spy)
    monkeypatch.setattr(PerceptualLM, "forward", lambda self, features, *rest: (
        zeroed.append(bool((features == 0).all())), forward(self, features, *rest))[1])
    summary = training.train(recipe)
    assert summary["eval_questions"] == 6
    assert zeroed and all(zeroed)
    assert seen and all(c is not None and all(re.fullmatch(r"The image shows an? \w+ \w+\.", t) for t in c)
                        for c in seen)

    seen.clear()
    code = main(["eval", str(tmp_path / "run" / "adapter"), "--data", "easy-vqa:test", "--limit", "6",
                 "--predictions", str(tmp_path / "predictions.jsonl")])
    assert code == 0
    assert seen and all(c is not None for c in seen), "an oracle adapter is evaluated with the truth as text"
