"""What the procedural benchmarks share: write_benchmark's files and summary, their wording, and the promises every
generator keeps: the seed alone decides its files, and one split does not depend on the size of another."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import file_bytes, qa_by_media, read_split
from pycocotools.coco import COCO

from sensorium.benchmarks import generator
from sensorium.benchmarks.wording import join_phrases, with_article
from sensorium.benchmarks.writing import Benchmark, Item, write_benchmark
from sensorium.data import parse_data_spec, read_dataset


@dataclass(frozen=True)
class SmallRun:
    """A generator run small enough for a test, and the number of files it writes."""

    n_train: int
    n_test: int
    files: int  # media, then 4 JSON files per split and meta.json
    options: tuple[dict[str, Any], ...] = ({}, {}, {})  # of the runs with one seed, the same seed, another seed


# Generated benchmark (NAME of ``sensorium data make-NAME``) -> its small run.
SMALL_RUNS = {
    "scenes": SmallRun(n_train=5, n_test=3, files=5 + 3 + 3 + 13),
    "videos": SmallRun(n_train=4, n_test=2, files=4 + 2 + 9),
    # The same seed with one and with three concurrent synthesisers.
    "audio": SmallRun(n_train=5, n_test=2, files=5 + 2 + 9, options=({"workers": 1}, {"workers": 3}, {"workers": 2})),
    # 4 + 6 files per split: the questions and annotations of each of its 3 question types apart too.
    "audiovisual": SmallRun(n_train=4, n_test=2, files=4 + 2 + 21,
                            options=({"workers": 1}, {"workers": 3}, {"workers": 2})),
}


def make(name: str, out: Path, **options: Any) -> dict[str, Any]:
    """``sensorium data make-NAME`` as a call: the summary of what it wrote under ``out``."""
    return getattr(generator(name), f"make_{name}")(out, **options)


@pytest.fixture(scope="module", params=list(SMALL_RUNS))
def written(request, tmp_path_factory):
    """(name, folder, summary) of a small run of each generator."""
    name, run = request.param, SMALL_RUNS[request.param]
    out = tmp_path_factory.mktemp(name)
    return name, out, make(name, out, n_train=run.n_train, n_test=run.n_test, seed=3)


@pytest.mark.parametrize("name", SMALL_RUNS)
def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, name):
    run = SMALL_RUNS[name]
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed, options in zip((first, again, other), (1, 1, 2), run.options, strict=True):
        make(name, folder, n_train=run.n_train, n_test=run.n_test, seed=seed, **options)
    written, repeated, different = file_bytes(first), file_bytes(again), file_bytes(other)
    assert len(written) == run.files and written.keys() == repeated.keys()
    assert [str(path) for path in written if written[path] != repeated[path]] == []  # names, not megabytes of bytes
    assert written.keys() == different.keys()
    medium = generator(name).BENCHMARK.media_path(first, "train", 1).relative_to(first)
    assert written[medium] != different[medium]
    assert read_split(first, "questions", "train") != read_split(other, "questions", "train")


@pytest.mark.parametrize("name", SMALL_RUNS)
def test_a_split_does_not_depend_on_the_size_of_another(tmp_path, name):
    benchmark = generator(name).BENCHMARK
    for n_train in (2, 6):
        make(name, tmp_path / str(n_train), n_train=n_train, n_test=3, seed=1)
    last = benchmark.splits[-1]
    for kind in ("captions", "questions", benchmark.plans):
        assert read_split(tmp_path / "2", kind, last) == read_split(tmp_path / "6", kind, last)


def test_the_standard_readers_load_every_split(written):
    """The data spec NAME:DIR/SPLIT reads what the VQA v2 reader reads from the split's files, and the COCO
    reader its captions, five different ones per medium."""
    name, out, summary = written
    benchmark = generator(name).BENCHMARK
    for split, counts in summary["splits"].items():
        questions = read_dataset(parse_data_spec(f"{name}:{out}/{split}"))
        assert len(questions) == counts["questions"]
        assert {e.answer_type for e in questions} <= set(benchmark.question_types)
        assert all(len(e.answers) == 10 and len(set(e.answers)) == 1 and Path(e.media).is_file() for e in questions)
        assert questions == read_dataset({"format": "vqav2", "questions": str(out / f"questions_{split}.json"),
                                          "annotations": str(out / f"annotations_{split}.json"),
                                          "images": str(out / benchmark.media), "file_pattern": benchmark.file_pattern})
        captions_file = str(out / f"captions_{split}.json")
        captions = read_dataset({"format": "coco", "annotations": captions_file, "images": str(out / benchmark.media)})
        assert len(captions) == counts[f"{benchmark.unit}s"] == len(COCO(captions_file).getImgIds())
        assert all(len(e.answers) == 5 == len(set(e.answers)) and Path(e.media).is_file() for e in captions)


@pytest.mark.parametrize("name", SMALL_RUNS)
def test_a_spec_of_an_unknown_split_names_the_splits(name):
    with pytest.raises(ValueError, match=", ".join(generator(name).BENCHMARK.splits)):
        parse_data_spec(f"{name}:some/dir/validation")


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
    assert [join_phrases(["a", "b", "c"][:n]) for n in (1, 2, 3)] == ["a", "a and b", "a, b and c"]
