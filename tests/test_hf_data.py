"""Hugging Face datasets as data (`hf:path=...`): save_to_disk folders, parquet, image and audio folders, built with
`datasets` in each test, read offline; then every command that reads data."""

from __future__ import annotations

import io
import json
import socket
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import yaml
from conftest import one_line_error, save_tiny_adapter, tiny_training_recipe
from PIL import Image
from test_video import write_clip

from sensorium import compare
from sensorium.cli import main
from sensorium.data import hf, parse_data_spec, read_dataset
from sensorium.errors import BadInputError
from sensorium.media.video import load_video
from sensorium.testing import COLOURS

EASY_VQA = Path(__file__).parents[1] / "recipes" / "compare" / "easy-vqa.yaml"


def png(colour: tuple[int, int, int], size: int = 32) -> bytes:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste(colour, (4, 4, 4 + size // 2, 4 + size // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def squares(rows: int = 8) -> datasets.Dataset:
    """VQA rows over the four colours, each image asked about twice (answers as lists, as VQA v2 keeps ten)."""
    names = [list(COLOURS)[row // 2 % len(COLOURS)] for row in range(rows)]
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": png(COLOURS[name]), "path": f"{name}.png"} for name in names],
         "question": ["what color is the shape ?" if row % 2 else "what color ?" for row in range(rows)],
         "answers": [[name, name] for name in names], "question_id": [f"q{row}" for row in range(rows)]},
        features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                    "answers": datasets.Sequence(datasets.Value("string")),
                                    "question_id": datasets.Value("string")}))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Datasets are read from the disk alone: any connection (to the hub or anywhere) fails the test."""

    def refused(*args, **kwargs):
        raise AssertionError("a network connection was opened")

    monkeypatch.setattr(socket.socket, "connect", refused)


def read(spec: str) -> list:
    return read_dataset(parse_data_spec(spec))


# ---- the reader ----------------------------------------------------------------------------------------------


def test_a_save_to_disk_folder_is_read_with_its_media_written_once(tmp_path):
    squares().save_to_disk(tmp_path / "set")
    examples = read(f"hf:path={tmp_path / 'set'}")
    assert [(e.question, e.answers, e.question_id) for e in examples] == [
        (row["question"], row["answers"], row["question_id"]) for row in squares()]
    # Each image's own bytes, one file per distinct image however many questions ask about it.
    assert [Path(e.media).read_bytes() for e in examples] == [png(COLOURS[e.answers[0]]) for e in examples]
    assert len({e.media for e in examples}) == len(COLOURS)
    assert all(e.media.endswith(".png") for e in examples)
    assert read(f"hf:path={tmp_path / 'set'}")[0].media == examples[0].media  # found again, not rewritten


def test_splits_of_a_dataset_dict_and_of_parquet_files(tmp_path):
    whole = squares(8)
    datasets.DatasetDict({"train": whole.select(range(6)), "test": whole.select(range(6, 8))}).save_to_disk(
        tmp_path / "dict")
    assert len(read(f"hf:path={tmp_path / 'dict'},split=test")) == 2
    with pytest.raises(BadInputError, match="several splits; name one with split=NAME \\(splits: train, test\\)"):
        read(f"hf:path={tmp_path / 'dict'}")
    with pytest.raises(BadInputError, match="no split 'validation'"):
        read(f"hf:path={tmp_path / 'dict'},split=validation")
    (tmp_path / "parquet").mkdir()
    whole.select(range(6)).to_parquet(str(tmp_path / "parquet" / "train-00000-of-00001.parquet"))
    whole.select(range(6, 8)).to_parquet(str(tmp_path / "parquet" / "test-00000-of-00001.parquet"))
    test = read(f"hf:path={tmp_path / 'parquet'},split=test")
    assert [e.question_id for e in test] == ["q6", "q7"]
    assert [e.question_id for e in read(f"hf:path={tmp_path / 'parquet' / 'test-00000-of-00001.parquet'}")] == \
        ["q6", "q7"]


def test_an_imagefolder_with_captions_in_its_metadata(tmp_path):
    folder = tmp_path / "captions" / "train"
    folder.mkdir(parents=True)
    lines = []
    for name, colour in COLOURS.items():
        (folder / f"{name}.png").write_bytes(png(colour))
        lines.append(json.dumps({"file_name": f"{name}.png", "text": f"a {name} square"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    examples = read(f"hf:path={tmp_path / 'captions'}")
    assert sorted((Path(e.media), e.answers[0]) for e in examples) == sorted(
        (folder / f"{name}.png", f"a {name} square") for name in COLOURS)  # the folder's own files, not copies
    assert {(e.question, e.answer_type) for e in examples} == {("", "caption")}


def test_an_audiofolder_with_questions_in_its_metadata(tmp_path):
    folder = tmp_path / "sounds"
    folder.mkdir()
    for number, hz in enumerate((220, 440)):
        samples = 0.5 * np.sin(2 * np.pi * hz * np.arange(8000) / 16000)
        soundfile.write(folder / f"{number}.wav", samples, 16000)
    (folder / "metadata.csv").write_text("file_name,question,answer\n0.wav,is it low ?,yes\n1.wav,is it low ?,no\n")
    examples = read(f"hf:path={folder}")
    assert [(Path(e.media).name, e.question, e.answers) for e in examples] == [
        ("0.wav", "is it low ?", ["yes"]), ("1.wav", "is it low ?", ["no"])]


def test_columns_are_named_in_the_spec_and_a_class_label_is_its_name(tmp_path):
    rows = squares(4)
    labelled = datasets.Dataset.from_dict(
        {"photo": rows["image"], "prompt": rows["question"], "label": [list(COLOURS).index(a[0]) for a in
                                                                        rows["answers"]]},
        features=datasets.Features({"photo": datasets.Image(), "prompt": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=list(COLOURS))}))
    labelled.save_to_disk(tmp_path / "set")
    with pytest.raises(BadInputError, match="no image, audio or video column \\(columns: photo, prompt, label\\)"):
        read(f"hf:path={tmp_path / 'set'}")
    examples = read(f"hf:path={tmp_path / 'set'},image=photo,question=prompt,answers=label")
    assert [e.answers for e in examples] == [[a[0]] for a in rows["answers"]]
    with pytest.raises(BadInputError, match="no column 'pixels' for image \\(columns: photo, prompt, label\\)"):
        read(f"hf:path={tmp_path / 'set'},image=pixels")
    with pytest.raises(BadInputError, match="no question or caption column"):
        read(f"hf:path={tmp_path / 'set'},image=photo")


def test_large_sets_stream_in_batches_and_media_are_bounded_before_copied(tmp_path, monkeypatch):
    squares(150).to_parquet(str(tmp_path / "big.parquet"))
    converted: list[int] = []  # the rows of each Arrow batch handed out

    def counted(iterate):
        def batches(dataset, *args, **kwargs):
            for batch in iterate(dataset, *args, **kwargs):
                converted.append(batch.num_rows)
                yield batch
        return batches

    for kind in (datasets.Dataset, datasets.IterableDataset):
        monkeypatch.setattr(kind, "iter", counted(kind.iter))
    assert len(read(f"hf:path={tmp_path / 'big.parquet'}")) == 150
    assert sum(converted) == 150 and max(converted) <= hf.BATCH_ROWS
    # A medium past the bound is refused from its Arrow length, naming its row, before its batch is copied out.
    rows = squares(200).to_dict()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")  # 12 KB that do not compress
    rows["image"][70] = {"bytes": buffer.getvalue(), "path": "large.png"}
    datasets.Dataset.from_dict(rows, features=squares(1).features).save_to_disk(tmp_path / "one-large")
    monkeypatch.setattr(hf, "MAX_MEDIUM_BYTES", 4096)
    converted.clear()
    with pytest.raises(BadInputError, match="row 70: a medium of [0-9,]+ bytes in 'image'; at most 4,096"):
        read(f"hf:path={tmp_path / 'one-large'}")
    assert converted == [hf.BATCH_ROWS, hf.BATCH_ROWS]  # its batch is the last read of four


def test_not_a_dataset_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["data", "split", f"hf:path={tmp_path}", "--held-out", "1", "--out", str(tmp_path / "out")]) != 0
    assert "a folder with no parquet, image, audio or video files" in one_line_error(capsys)


# ---- the commands ----------------------------------------------------------------------------------------------


@pytest.fixture
def colour_set(tmp_path) -> Path:
    whole = squares(24)
    folder = tmp_path / "colours"
    datasets.DatasetDict({"train": whole.select(range(16)), "test": whole.select(range(16, 24))}).save_to_disk(folder)
    return folder


def test_dry_run_counts_train_eval_and_data_split_read_it(colour_set, tiny_lm_folder, tiny_vit_folder, tmp_path,
                                                         capsys):
    recipe = tiny_training_recipe({"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 2,
                                   "inject_layers": [2, 3]}, tmp_path / "unused.jsonl", tmp_path / "run", 3)
    recipe.data = {"train": {"format": "hf", "path": str(colour_set), "split": "train"},
                   "eval": {"format": "hf", "path": str(colour_set), "split": "test"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train: hf, 16 examples, 4 distinct media files" in out and "eval: hf, 8 examples, 4 distinct" in out

    assert main(["train", str(path)]) == 0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert len((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()) == 8  # the test split, scored
    adapter = save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path / "adapter")
    capsys.readouterr()
    predictions = tmp_path / "predictions.jsonl"
    assert main(["eval", adapter, "--data", f"hf:path={colour_set},split=test", "--predictions",
                 str(predictions)]) == 0
    assert sorted(json.loads(line)["question_id"] for line in predictions.read_text().splitlines()) == \
        [f"q{row}" for row in range(16, 24)]

    assert main(["data", "split", f"hf:path={colour_set},split=train", "--held-out", "4", "--out",
                 str(tmp_path / "split")]) == 0
    kept, held = (read_dataset({"format": "jsonl", "path": str(tmp_path / "split" / name)})
                  for name in ("train.jsonl", "held-out.jsonl"))
    assert len(kept) + len(held) == 16 and len(held) >= 4 and not {e.media for e in kept} & {e.media for e in held}


def test_compare_trains_and_scores_on_a_dataset(tmp_path):
    """eP-ALM and its text oracle, which reads each image's truth column, through the validation split's
    manifests too."""
    whole = squares(24)
    whole = whole.add_column("truth", [f"a {answers[0]} square" for answers in whole["answers"]])
    datasets.DatasetDict({"train": whole.select(range(16)), "test": whole.select(range(16, 24))}).save_to_disk(
        tmp_path / "colours")
    comparison = compare.smoke(compare.load_comparison(EASY_VQA), tmp_path / "compare")
    comparison.recipe["data"] = {"train": {"format": "hf", "path": str(tmp_path / "colours"), "split": "train"},
                                 "eval": {"format": "hf", "path": str(tmp_path / "colours"), "split": "test"}}
    [epalm] = [m for m in comparison.methods if m.name == "epalm"]
    oracle = replace(epalm, name="oracle", overrides={**epalm.overrides, "training": {"oracle": True}})
    summary = compare.run(replace(comparison, methods=[epalm, oracle], seeds=[0]))
    assert [method["name"] for method in summary["methods"]] == ["epalm", "oracle"]
    for method in summary["methods"]:
        assert [run["seed"] for run in method["runs"]] == [0] and 0 <= method["runs"][0]["test"] <= 100
        assert list(method["validation_by_lr"]) == ["0.001", "0.003"]


def test_a_video_column_and_a_column_of_file_names(tmp_path):
    clip = Path(write_clip(tmp_path / "clip.mp4", 6)).read_bytes()
    datasets.Dataset.from_dict({"video": [{"bytes": clip, "path": "clip.mp4"}], "question": ["what moves ?"],
                                "answer": ["a square"]},
                               features=datasets.Features({"video": datasets.Video(), "question": datasets.Value(
                                   "string"), "answer": datasets.Value("string")})).save_to_disk(tmp_path / "clips")
    [example] = read(f"hf:path={tmp_path / 'clips'}")
    assert Path(example.media).read_bytes() == clip and example.media.endswith(".mp4")
    assert len(load_video(example.media, 4)) == 4 and example.answers == ["a square"]
    # Media named by a text column, relative to the dataset's folder, are read where they lie.
    (tmp_path / "named").mkdir()
    (tmp_path / "named" / "red.png").write_bytes(png(COLOURS["red"]))
    datasets.Dataset.from_dict({"file": ["red.png"], "caption": ["a red square"]}).to_parquet(
        str(tmp_path / "named" / "data.parquet"))
    [named] = read(f"hf:path={tmp_path / 'named' / 'data.parquet'},image=file")
    assert (named.media, named.answers) == (str(tmp_path / "named" / "red.png"), ["a red square"])
