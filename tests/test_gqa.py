"""GQA reader: the official questions JSON + images folder, and one-line errors naming the file."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sensorium.data import parse_data_spec, read_dataset
from sensorium.errors import BadInputError

QUESTIONS = {
    "20968379": {"imageId": "n15740", "question": "Is the sky blue?", "answer": "yes", "fullAnswer": "Yes, it is.",
                 "isBalanced": True, "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}},
    "05515938": {"imageId": "2354786", "question": "What is on the table?", "answer": "cup",
                 "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
}


def write_gqa(folder, questions=QUESTIONS):
    (folder / "images").mkdir()
    for entry in questions.values():
        Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "images" / f"{entry['imageId']}.jpg")
    (folder / "questions.json").write_text(json.dumps(questions))
    return f"gqa:questions={folder / 'questions.json'},images={folder / 'images'}"


def test_gqa_official_layout_round_trip(tmp_path):
    examples = read_dataset(parse_data_spec(write_gqa(tmp_path)))
    by_id = {e.question_id: e for e in examples}
    assert set(by_id) == set(QUESTIONS)
    for question_id, entry in QUESTIONS.items():
        example = by_id[question_id]
        assert example.media == str(tmp_path / "images" / f"{entry['imageId']}.jpg")
        assert example.question == entry["question"] and example.answers == [entry["answer"]]
        assert example.answer_type == entry["types"]["structural"]
    assert all(Image.open(e.media).size == (8, 8) for e in examples)


def test_gqa_test_split_without_answers(tmp_path):
    questions = {"t1": {"imageId": "n1", "question": "What color is it?"}}
    [example] = read_dataset(parse_data_spec(write_gqa(tmp_path, questions)))
    assert example.answers == [] and example.answer_type == "other"


@pytest.mark.parametrize("content, reason", [
    ("{not json", "malformed JSON"),
    (json.dumps([{"imageId": "1"}]), "expected an object mapping question ids"),
    (json.dumps({"q7": {"question": "where?"}}), "malformed question 'q7'"),
])
def test_malformed_gqa_files_are_named(tmp_path, content, reason):
    (tmp_path / "questions.json").write_text(content)
    with pytest.raises(BadInputError, match=rf"questions.json: .*{reason}"):
        read_dataset({"format": "gqa", "questions": str(tmp_path / "questions.json"), "images": str(tmp_path)})


def test_missing_gqa_file_is_named(tmp_path):
    with pytest.raises(BadInputError, match="nothing.json: file not found"):
        read_dataset(parse_data_spec(f"gqa:questions={tmp_path / 'nothing.json'},images={tmp_path}"))
