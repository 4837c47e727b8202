"""Shapes scenes: deterministic, compositional, truthful, and readable by the standard readers."""

from __future__ import annotations

import json
import re

import pytest
from conftest import qa_by_media, read_split
from PIL import Image
from pycocotools.coco import COCO

from sensorium.benchmarks.scenes import COLORS, HELD_OUT, QUESTION_TYPES, SHAPES, SPLITS, make_scenes
from sensorium.cli import main

HELD_OUT_NAMES = {f"{color} {shape}" for color, shape in HELD_OUT}
RELATIONS = {"to the left of": "left", "to the right of": "right", " above ": "above", " below ": "below",
             "bigger than": "bigger", "smaller than": "smaller"}
NAME = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    summary = make_scenes(out, n_train=60, n_test=30, seed=7)
    return out, summary


def graphs(out, split):
    return {scene["image_id"]: scene["objects"] for scene in read_split(out, "scenes", split)["scenes"]}


def names(objects):
    return {f"{o['color']} {o['shape']}" for o in objects}


def center(o):
    x, y, w, h = o["bbox"]
    return x + w / 2, y + h / 2


def where(objects, a_name, b_name):
    """Where a is relative to b, from the bbox centres; the offset must be clearly along one axis."""
    (ax, ay), (bx, by) = center(find(objects, a_name)), center(find(objects, b_name))
    dx, dy = abs(ax - bx), abs(ay - by)
    assert max(dx, dy) >= 2 * min(dx, dy), (a_name, b_name, objects)
    return ("left" if ax < bx else "right") if dx > dy else ("above" if ay < by else "below")


def find(objects, name):
    [match] = [o for o in objects if f"{o['color']} {o['shape']}" == name]
    return match


def test_summary_and_meta_name_the_held_out_combinations(scenes):
    out, summary = scenes
    assert json.loads((out / "meta.json").read_text()) == summary
    assert summary["held_out"] == [list(pair) for pair in HELD_OUT] and summary["seed"] == 7
    assert {name: s["images"] for name, s in summary["splits"].items()} == {"train": 60, "test": 30, "test-novel": 30}
    for split in SPLITS:
        types = summary["splits"][split]["question_types"]
        assert sum(types.values()) == summary["splits"][split]["questions"]
    assert all(count > 0 for count in summary["splits"]["train"]["question_types"].values())


def test_held_out_combinations_never_appear_in_train_and_test(scenes):
    out, _ = scenes
    for split in ("train", "test"):
        assert not any(names(objects) & HELD_OUT_NAMES for objects in graphs(out, split).values())
        text = [c["caption"] for c in read_split(out, "captions", split)["annotations"]]
        text += [q for qa in qa_by_media(out, split).values() for q, _, _ in qa]
        assert not any(set(NAME.findall(line)) & set(HELD_OUT) for line in text)


def test_every_test_novel_image_holds_a_held_out_combination_and_is_asked_about_it(scenes):
    out, _ = scenes
    scenes_novel, qa = graphs(out, "test-novel"), qa_by_media(out, "test-novel")
    captions = read_split(out, "captions", "test-novel")["annotations"]
    for image_id, objects in scenes_novel.items():
        novel = [o for o in objects if f"{o['color']} {o['shape']}" in HELD_OUT_NAMES]
        assert novel
        words = {w for o in novel for w in (o["color"], o["shape"])}
        for caption in (c["caption"] for c in captions if c["image_id"] == image_id):
            assert any(o["color"] in caption and o["shape"] in caption for o in novel), caption
        for question, answer, kind in qa[image_id]:
            named = {" ".join(pair) for pair in NAME.findall(question)}
            if kind == "existence" and answer == "no":  # an absent held-out combination
                assert named <= HELD_OUT_NAMES - names(objects), question
            else:
                assert any(word in question for word in words), question


def test_captions_and_questions_are_true_to_the_scene(scenes):
    out, _ = scenes
    for split in SPLITS:
        scene_of, qa = graphs(out, split), qa_by_media(out, split)
        for caption in read_split(out, "captions", split)["annotations"]:
            objects = scene_of[caption["image_id"]]
            assert {" ".join(pair) for pair in NAME.findall(caption["caption"])} <= names(objects)
            if match := re.match(r"(two|three|four) shapes", caption["caption"]):
                assert ["two", "three", "four"].index(match[1]) + 2 == len(objects)
            check_caption_relation(objects, caption["caption"])
        for image_id, pairs in qa.items():
            for question, answer, kind in pairs:
                check_answer(scene_of[image_id], question, answer, kind)


def check_caption_relation(objects, caption):
    """'a red circle to the left of a blue square', 'the red circle is bigger than the blue square'."""
    for phrase, relation in RELATIONS.items():
        if phrase in caption:
            before, after = caption.split(phrase, 1)
            a, b = (" ".join(NAME.findall(part)[i]) for part, i in ((before, -1), (after, 0)))
            if relation in ("bigger", "smaller"):
                assert (find(objects, a)["size"] == "large") == (relation == "bigger"), caption
                assert find(objects, a)["size"] != find(objects, b)["size"], caption
            else:
                assert where(objects, a, b) == relation, caption


def check_answer(objects, question, answer, kind):
    """Recompute the answer from the scene graph alone, independently of the generator."""
    assert re.fullmatch(r"[a-z0-9]+", answer) and kind in QUESTION_TYPES
    mentioned = [" ".join(pair) for pair in NAME.findall(question)]
    if kind == "existence":
        assert answer == ("yes" if mentioned[0] in names(objects) else "no")
    elif kind == "count":
        subject = re.match(r"how many (\w+ )?(\w+)s are there\?", question)
        if subject[2] == "shape":
            expected = sum(subject[1] in (None, o["color"] + " ") for o in objects)
        else:
            expected = sum(o["shape"] == subject[2] for o in objects)
        assert answer == str(expected), question
    elif kind == "color":
        size, shape = re.match(r"what color is the (?:(small|large) )?(\w+)\?", question).groups()
        [match] = [o for o in objects if o["shape"] == shape and size in (None, o["size"])]
        assert answer == match["color"]
    elif kind == "shape":
        size, color = re.match(r"what shape is the (?:(small|large) )?(\w+) object\?", question).groups()
        [match] = [o for o in objects if o["color"] == color and size in (None, o["size"])]
        assert answer == match["shape"]
    elif kind == "position":
        actual = where(objects, *mentioned)
        said = next((w for w in ("left", "right", "above", "below") if w in question), None)
        assert answer == (actual if question.startswith("where") else "yes" if said == actual else "no"), question
    else:
        a, b = (find(objects, name) for name in mentioned)
        assert a["size"] != b["size"]
        bigger = a["bbox"][2] > b["bbox"][2]
        assert answer == ("yes" if bigger == ("bigger" in question) else "no"), question


def test_existence_answers_are_balanced(scenes):
    out, _ = scenes
    answers = [a for qa in qa_by_media(out, "train").values() for _, a, kind in qa if kind == "existence"]
    assert answers.count("yes") == answers.count("no") == 60


def test_images_are_224_rgb_jpegs_with_coco_names(scenes):
    out, _ = scenes
    with Image.open(out / "images" / "COCO_scenes-test-novel_000000000030.jpg") as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (224, 224)


def test_captions_are_standard_coco(scenes):
    out, _ = scenes
    coco = COCO(str(out / "captions_test.json"))
    assert len(coco.getImgIds()) == 30
    for image_id in coco.getImgIds():
        image = coco.loadImgs(image_id)[0]
        assert (out / "images" / image["file_name"]).is_file()
        captions = [a["caption"] for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        assert len(captions) == len(set(captions)) == 5


def test_cli_makes_scenes_and_prints_a_summary(tmp_path, capsys):
    assert main(["data", "make-scenes", "--out", str(tmp_path), "--n-train", "3", "--n-test", "2",
                 "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "held out of train: red triangle" in out and "images/s" in out
    assert json.loads((tmp_path / "meta.json").read_text())["seed"] == 5
    assert len(list((tmp_path / "images").glob("COCO_scenes-*.jpg"))) == 7


@pytest.mark.parametrize("flag, value", [("--n-train", "0"), ("--n-test", "-2")])
def test_cli_rejects_a_non_positive_count(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "make-scenes", "--out", str(tmp_path), flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be >= 1, not {value}" in capsys.readouterr().err
    assert not (tmp_path / "meta.json").exists()
