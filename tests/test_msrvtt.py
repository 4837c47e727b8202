"""MSRVTT-QA / MSVD-QA and MSR-VTT caption readers: round trips, video lookup, errors naming the file."""

from __future__ import annotations

import json

import pytest

from sensorium.data import parse_data_spec, read_dataset
from sensorium.data.msrvtt import read_captions, read_qa
from sensorium.errors import BadInputError
from sensorium.metrics import write_coco_results


@pytest.fixture
def folder(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("video7010.mp4", "video7011.webm", "vid3.avi", "42.mkv", "clip.mp4", "notes.txt"):
        (videos / name).write_bytes(b"")
    return videos


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_qa_finds_videos_by_id_or_name_under_common_extensions(tmp_path, folder):
    questions = write(tmp_path, "qa.json", [
        {"id": 0, "video_id": 7010, "question": "what is a man doing?", "answer": "cooking"},
        {"id": 1, "video_id": 7011, "question": "who is singing?", "answer": "woman"},
        {"id": 2, "video_id": 3, "question": "how many dogs run?", "answer": "two"},
        {"id": 3, "video_id": 42, "question": "when does it rain?", "answer": "night", "answer_type": "time"},
        {"id": 4, "video": "clip", "question": "is it sunny?", "answer": "yes"},
        {"id": 5, "video": "video7010.mp4", "question": "where is the cat?", "answer": "sofa"},
    ])
    examples = read_qa(questions, str(folder))
    assert [e.media for e in examples] == [str(folder / name) for name in (
        "video7010.mp4", "video7011.webm", "vid3.avi", "42.mkv", "clip.mp4", "video7010.mp4")]
    assert [e.answer_type for e in examples] == ["what", "who", "how", "time", "other", "where"]
    assert [e.answers for e in examples][:2] == [["cooking"], ["woman"]]
    assert [e.question_id for e in examples] == ["0", "1", "2", "3", "4", "5"]


def test_qa_spec_and_msvd_layout(tmp_path, folder):
    questions = write(tmp_path, "msvd.json", [{"answer": "dog", "id": 9, "question": "what runs?", "video_id": 3}])
    [example] = read_dataset(parse_data_spec(f"msrvtt-qa:questions={questions},videos={folder}"))
    assert example.media == str(folder / "vid3.avi") and example.answers == ["dog"]


def test_a_missing_video_keeps_its_expected_path_for_the_cache_to_report(tmp_path, folder):
    questions = write(tmp_path, "qa.json", [{"video_id": 7010, "question": "what?", "answer": "a"},
                                            {"video_id": 9999, "question": "what?", "answer": "b"}])
    assert read_qa(questions, str(folder))[1].media == str(folder / "video9999.mp4")


@pytest.mark.parametrize(("data", "reason"), [
    ([{"video_id": 5, "question": "what?", "answer": "a"}], "none of the 1 questions' videos is in this folder"),
    ([{"question": "what?", "answer": "a"}], "malformed question entry"),
    ([{"video_id": 7010, "answer": "a"}], "malformed question entry"),
    ({"questions": []}, "expected a JSON list"),
])
def test_bad_qa_files_name_the_problem(tmp_path, folder, data, reason):
    with pytest.raises(BadInputError, match=reason):
        read_qa(write(tmp_path, "qa.json", data), str(folder))


def test_qa_errors_for_missing_files_and_folders(tmp_path, folder):
    with pytest.raises(BadInputError, match="nothing.json: file not found"):
        read_qa(str(tmp_path / "nothing.json"), str(folder))
    questions = write(tmp_path, "qa.json", [])
    with pytest.raises(BadInputError, match="video folder not found"):
        read_qa(questions, str(tmp_path / "elsewhere"))


CAPTIONS = {
    "info": {"year": 2016},
    "videos": [{"video_id": "video7010", "split": "train", "id": 7010},
               {"video_id": "video7011", "split": "test", "id": 7011},
               {"video_id": "video3", "split": "validate", "id": 3}],
    "sentences": [{"video_id": "video7010", "caption": "a man cooks pasta ", "sen_id": 1},
                  {"video_id": "video7011", "caption": "a woman sings", "sen_id": 2},
                  {"video_id": "video7010", "caption": "someone is cooking", "sen_id": 3}],
}


def test_caption_file_gives_one_example_per_video_with_all_captions(tmp_path, folder):
    path = write(tmp_path, "videodatainfo.json", CAPTIONS)
    examples = read_captions(path, str(folder))
    assert [(e.question_id, e.question, e.answers, e.answer_type) for e in examples] == [
        ("video7010", "", ["a man cooks pasta", "someone is cooking"], "caption"),
        ("video7011", "", ["a woman sings"], "caption")]  # video3 has no sentence: left out
    assert examples[1].media == str(folder / "video7011.webm")
    [train] = read_dataset(parse_data_spec(f"msrvtt-caption:path={path},videos={folder},split=train"))
    assert train.question_id == "video7010"
    results = tmp_path / "results.json"
    write_coco_results([{"question_id": e.question_id, "prediction": "x"} for e in examples], results)
    assert [r["image_id"] for r in json.loads(results.read_text())] == ["video7010", "video7011"]


def test_caption_file_without_sentences_lists_every_video(tmp_path, folder):
    path = write(tmp_path, "test_videodatainfo.json", {"videos": CAPTIONS["videos"]})
    examples = read_captions(path, str(folder), split="validate")
    assert [(e.question_id, e.answers, e.media) for e in examples] == [("video3", [], str(folder / "video3.mp4"))]


def test_caption_split_that_is_not_there_lists_the_splits(tmp_path, folder):
    path = write(tmp_path, "videodatainfo.json", CAPTIONS)
    with pytest.raises(BadInputError, match="no videos in split 'val' .*train, validate"):
        read_captions(path, str(folder), split="val")
    with pytest.raises(BadInputError, match="expected an object with a 'videos' list"):
        read_captions(write(tmp_path, "bad.json", {"sentences": []}), str(folder))
