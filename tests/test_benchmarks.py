"""What the procedural benchmarks share: write_benchmark's files and summary, and their wording."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import file_bytes, qa_by_media, read_split

from sensorium.benchmarks.wording import join_phrases, with_article
from sensorium.benchmarks.writing import Benchmark, Item, write_benchmark
from sensorium.data import read_dataset

NOTES = Benchmark(description="notes", version=2, splits=("train", "test", "test-other"), media="notes",
                  file_pattern="{subtype}_{image_id:06d}.txt", data_type="notes", plans="notes",
                  question_types=("parity", "never"), unit="note", making="writing")


def make_note(out: Path, split: str, index: int, seed: int) -> Item:
    """A medium that is a text file holding a seeded number, asked whether that number is even."""
    number = random.Random(f"{seed}/{split}/{index}").randrange(1000)
    note_id = index + 1
    file = NOTES.media_path(out, split, note_id)
    file.write_text(f"{number}\n")
    return Item(media={"id": note_id, "file_name": file.name}, plan={"image_id": note_id, "number": number},
                captions=[f"the number {number}"], questions=[("parity", "is it even?", "yes" if number % 2 == 0
                                                               else "no")])


def test_every_split_and_the_summary_are_written(tmp_path):
    summary = write_benchmark(tmp_path, NOTES, make_note, n_train=4, n_test=2, seed=3, details={"digits": 3})
    assert json.loads((tmp_path / "meta.json").read_text()) == summary
    assert list(summary) == ["generator", "version", "seed", "digits", "splits"]
    assert (summary["generator"], summary["version"], summary["seed"]) == ("sensorium notes", 2, 3)
    assert summary["splits"]["test-other"] == {"notes": 2, "captions": 2, "questions": 2,
                                               "question_types": {"parity": 2, "never": 0}}
    answers = {media: [answer for _, answer, _ in qa] for media, qa in qa_by_media(tmp_path, "test").items()}
    numbers = {plan["image_id"]: plan["number"] for plan in read_split(tmp_path, "notes", "test")["notes"]}
    assert answers == {media: ["yes" if number % 2 == 0 else "no"] for media, number in numbers.items()}
    examples = read_dataset({"format": "vqav2", "questions": str(tmp_path / "questions_train.json"),
                             "annotations": str(tmp_path / "annotations_train.json"),
                             "images": str(tmp_path / "notes"), "file_pattern": NOTES.file_pattern})
    plans = read_split(tmp_path, "notes", "train")["notes"]
    assert [plan["image_id"] for plan in plans] == [1, 2, 3, 4]
    assert [Path(e.media).read_text() for e in examples] == [f"{plan['number']}\n" for plan in plans]


def test_the_files_do_not_depend_on_the_number_of_workers(tmp_path):
    for workers in (1, 4):
        write_benchmark(tmp_path / str(workers), NOTES, make_note, n_train=9, n_test=5, seed=1, details={},
                        workers=workers)
    assert file_bytes(tmp_path / "1") == file_bytes(tmp_path / "4")


@pytest.mark.parametrize("n_train, n_test, message", [(0, 2, "train notes must be at least 1, got 0"),
                                                      (2, -1, "test notes must be at least 1, got -1")])
def test_an_empty_split_is_refused_before_anything_is_written(tmp_path, n_train, n_test, message):
    with pytest.raises(ValueError, match=message):
        write_benchmark(tmp_path / "out", NOTES, make_note, n_train, n_test, seed=0, details={})
    assert not (tmp_path / "out").exists()


def test_wording():
    assert [with_article(noun) for noun in ("red circle", "orange star", "high beep")] == [
        "a red circle", "an orange star", "a high beep"]
    assert [join_phrases(words[:n]) for words in [["a", "b", "c"]] for n in (1, 2, 3)] == ["a", "a and b",
                                                                                          "a, b and c"]
