"""Readers and image loading: the formats users have, and one-line errors for bad input."""

from __future__ import annotations

import inspect
import json

import pytest
from PIL import Image

from sensorium.cli import build_parser
from sensorium.data import FORMATS, data_spec_forms, parse_data_spec, read_dataset, reader
from sensorium.data.easyvqa import answer_type
from sensorium.errors import BadInputError
from sensorium.media import load_image


def write_image(path, color=(255, 0, 0)):
    Image.new("RGB", (16, 16), color).save(path)
    return path


def test_easy_vqa_is_read_with_answer_types():
    examples = read_dataset({"format": "easy-vqa", "split": "test"})
    assert len(examples) == 9673
    assert {e.answer_type for e in examples} == {"yes/no", "shape", "color"}
    assert all(len(e.answers) == 1 for e in examples)
    assert answer_type("teal") == "color" and answer_type("circle") == "shape"


def test_a_limit_is_a_fixed_seeded_sample():
    first = read_dataset({"format": "easy-vqa", "split": "test", "limit": 50, "seed": 0})
    again = read_dataset({"format": "easy-vqa", "split": "test", "limit": 50, "seed": 0})
    other = read_dataset({"format": "easy-vqa", "split": "test", "limit": 50, "seed": 1})
    assert [e.question_id for e in first] == [e.question_id for e in again]
    assert [e.question_id for e in first] != [e.question_id for e in other]


def test_jsonl_manifest_paths_are_relative_to_the_manifest(tmp_path):
    write_image(tmp_path / "a.png")
    manifest = tmp_path / "set.jsonl"
    manifest.write_text(json.dumps({"media": "a.png", "question": "what color?", "answers": ["red"]}) + "\n\n")
    [example] = read_dataset(parse_data_spec(str(manifest)))
    assert example.media == str(tmp_path / "a.png") and example.answers == ["red"]


@pytest.mark.parametrize("line, reason", [
    ("{not json", "malformed JSON"),
    (json.dumps({"question": "q"}), "needs 'media' and 'question'"),
    (json.dumps({"media": "a.png", "question": "q", "answers": "red"}), "must be a list"),
])
def test_malformed_manifest_lines_name_file_and_line(tmp_path, line, reason):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"media": "a.png", "question": "q", "answers": ["x"]}) + "\n" + line + "\n")
    with pytest.raises(BadInputError, match=rf"bad.jsonl:2: .*{reason}"):
        read_dataset({"format": "jsonl", "path": str(manifest)})


def test_vqav2_official_layout(tmp_path):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "COCO_val2014_000000000042.jpg")
    questions = {"data_subtype": "val2014", "questions": [{"question_id": 420, "image_id": 42,
                                                          "question": "What color is it?"}]}
    answers = [{"answer": a, "answer_id": i} for i, a in enumerate(["red"] * 7 + ["pink"] * 3)]
    annotations = {"annotations": [{"question_id": 420, "image_id": 42, "answer_type": "other",
                                    "multiple_choice_answer": "red", "answers": answers}]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    spec = parse_data_spec(f"vqav2:questions={tmp_path / 'q.json'},annotations={tmp_path / 'a.json'},"
                           f"images={tmp_path / 'images'}")
    [example] = read_dataset(spec)
    assert example.media.endswith("COCO_val2014_000000000042.jpg")
    assert example.answers.count("red") == 7 and example.answer_type == "other"


def test_vqav2_malformed_annotations_are_named(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 1, "question": "?"}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": "nope"}))
    with pytest.raises(BadInputError, match=r"a.json: expected an object with a 'annotations' list"):
        read_dataset({"format": "vqav2", "questions": str(tmp_path / "q.json"),
                      "annotations": str(tmp_path / "a.json"), "images": str(tmp_path)})


def test_unknown_data_spec_is_reported():
    with pytest.raises(ValueError, match="unknown data spec 'coco-wat'"):
        parse_data_spec("coco-wat")


def test_the_error_for_an_unknown_data_spec_lists_every_form():
    with pytest.raises(ValueError) as error:
        parse_data_spec("jsonl:x")
    assert all(form in str(error.value) for form in data_spec_forms())


def test_every_form_of_the_format_table_parses_back_to_its_format():
    for name, fmt in FORMATS.items():
        assert parse_data_spec(fmt.usage(name).replace("..", "x"))["format"] == name
    for generated in ("scenes", "videos", "audio"):
        assert parse_data_spec(f"{generated}:some/dir/test")["format"] == "vqav2"


def test_every_format_reads_the_arguments_its_command_line_form_names():
    for name, fmt in FORMATS.items():
        parameters = inspect.signature(reader(name)).parameters
        named = fmt.keys or (("path",) if fmt.suffix else ("split",))
        assert set(named) <= set(parameters), name


def test_the_cli_help_lists_every_data_spec_form(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    shown = "".join(capsys.readouterr().out.split())  # help wraps lines, even inside a form
    assert all("".join(form.split()) in shown for form in data_spec_forms())


def test_good_image_loads_as_rgb(tmp_path):
    image = Image.new("L", (8, 8), 128)
    image.save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").mode == "RGB"


def truncated_png(tmp_path):
    Image.effect_noise((64, 64), 50).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.png"


@pytest.mark.parametrize("make, reason", [
    (lambda d: d / "missing.png", "file not found"),
    (lambda d: (d / "notes.png").write_text("hello") and d / "notes.png", "not an image file"),
    (lambda d: (d / "empty.jpg").write_bytes(b"") == 0 and d / "empty.jpg", "not an image file"),
    (truncated_png, "unreadable image"),
])
def test_bad_images_raise_one_line_errors_naming_the_file(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(BadInputError) as caught:
        load_image(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message
