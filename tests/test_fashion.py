"""`sensorium data make-fashion`: Fashion-MNIST's IDX files as a Hugging Face dataset, read back by the hf: spec."""

from __future__ import annotations

import gzip
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from sensorium.cli import main
from sensorium.data import parse_data_spec, read_dataset
from sensorium.data.fashion import CLASSES, SOURCE, make_fashion
from sensorium.oracle import with_truth


def write_idx(path: Path, items: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, items.ndim) + struct.pack(f">{items.ndim}I", *items.shape)
    path.write_bytes(gzip.compress(header + items.astype(np.uint8).tobytes()))


@pytest.fixture
def release(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny release in the original layout: each photo's grey level is 20 x its label, plus its index."""
    folder, labels = tmp_path / "release", {"train": np.arange(12) % 10, "t10k": np.array([9, 3, 8, 0])}
    folder.mkdir()
    for prefix, split_labels in labels.items():
        photos = np.stack([np.full((28, 28), 20 * label + index, np.uint8) for index, label in enumerate(split_labels)])
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", photos)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", split_labels)
    return folder, labels


def questions_by_photo(examples) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for example in examples:
        found[example.question_id.rsplit("-", 1)[0]][example.question] = example.answers[0]
    return found


def test_questions_are_true_by_the_label_and_photos_kept(release, tmp_path):
    source, labels = release
    summary = make_fashion(tmp_path / "out", source)
    assert summary["test"] == {"photos": 4, "questions": 15, "captions": 4}  # the dress is not asked about sleeves
    test = read_dataset(parse_data_spec(f"hf:path={tmp_path / 'out' / 'vqa'},split=test"))
    asked = questions_by_photo(test)
    assert asked["test-00000"] == {"what is this item?": "ankle boot", "is it worn on the feet?": "yes",
                                   "is it a bag?": "no", "does it have sleeves?": "no"}
    assert asked["test-00001"] == {"what is this item?": "dress", "is it worn on the feet?": "no", "is it a bag?": "no"}
    assert asked["test-00002"]["is it a bag?"] == "yes" and asked["test-00003"]["does it have sleeves?"] == "yes"
    assert {e.answer_type for e in test} == {"item", "yes/no"}
    first = next(e for e in test if e.question_id == "test-00000-0")
    assert np.array_equal(np.asarray(Image.open(first.media)), np.full((28, 28), 20 * 9, np.uint8))
    captions = read_dataset(parse_data_spec(f"hf:path={tmp_path / 'out' / 'captions'},split=train"))
    assert [e.answers for e in captions] == [[f"a grey photo of {CLASSES[label][1]}"] for label in labels["train"]]


def test_the_command_limits_each_split(release, tmp_path, capsys):
    source, _ = release
    out = tmp_path / "out"
    assert main(["data", "make-fashion", "--out", str(out), "--source", str(source), "--n-train", "5"]) == 0
    printed = capsys.readouterr().out
    assert "train: 5 photos" in printed and "test: 4 photos" in printed
    assert f"hf:path={out}/vqa,split=test" in printed
    assert len(read_dataset(parse_data_spec(f"hf:path={out / 'captions'},split=train"))) == 5


@pytest.mark.parametrize(("damage", "words"), [
    (lambda data: data[:-100], "bytes of items; its header declares"),
    (lambda data: struct.pack(">HBB", 0, 0x0D, 3) + data[4:], "expected unsigned bytes"),
    (lambda data: data[:4] + struct.pack(">I", 10**9) + data[8:], "at most 100,000 items"),
])
def test_a_damaged_release_is_one_line(release, tmp_path, capsys, damage, words):
    source, _ = release
    images = source / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(damage(gzip.decompress(images.read_bytes()))))
    assert main(["data", "make-fashion", "--out", str(tmp_path / "out"), "--source", str(source)]) != 0
    assert words in one_line_error(capsys)


@pytest.mark.skipif(not SOURCE.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (make test installs "
                                               "it)")
def test_the_installed_release(tmp_path):
    """The first photos of Debian's package: the official test split opens with an ankle boot and a pullover."""
    summary = make_fashion(tmp_path / "out", limits={"train": 20, "test": 2})
    assert summary["train"]["photos"] == 20 and summary["test"]["photos"] == 2
    asked = questions_by_photo(read_dataset(parse_data_spec(f"hf:path={tmp_path / 'out' / 'vqa'},split=test")))
    assert [asked[f"test-0000{index}"]["what is this item?"] for index in range(2)] == ["ankle boot", "pullover"]


def test_the_text_oracle_reads_each_photos_truth_through_a_split(release, tmp_path):
    """The truth column survives `data split` (its manifests), so an oracle run trains on any part of the set."""
    source, _ = release
    make_fashion(tmp_path / "out", source)
    test = with_truth(read_dataset(parse_data_spec(f"hf:path={tmp_path / 'out' / 'vqa'},split=test")))
    assert test[0].extra["context"] == "The image shows an ankle boot."
    assert main(["data", "split", f"hf:path={tmp_path / 'out' / 'captions'},split=train", "--held-out", "3", "--out",
                 str(tmp_path / "split")]) == 0
    held = with_truth(read_dataset({"format": "jsonl", "path": str(tmp_path / "split" / "held-out.jsonl")}))
    assert len(held) >= 3
    for example in held:
        label = next(label for label, (_, words) in enumerate(CLASSES) if example.answers[0].endswith(words))
        assert example.extra["context"] == f"The image shows {CLASSES[label][1]}."
