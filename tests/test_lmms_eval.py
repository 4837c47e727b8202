"""lmms-eval's command line scores an adapter (``--model sensorium``, found through lmms-eval's entry points) on a
Hugging Face dataset on disk with the task of recipes/lmms-eval, offline, answer for answer as ``sensorium eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import save_steered_adapter
from lmms_eval.api.instance import Instance
from PIL import Image
from test_audio import tiny_audio_model, tone, write_wav
from test_hf_data import png
from test_video import write_clip

from sensorium import AdapterConfig, load
from sensorium.cli import main
from sensorium.lmms_eval_model import Sensorium, decoding, request_batches
from sensorium.metrics import summarize
from sensorium.testing import COLOURS

RECIPES = Path(__file__).parents[1] / "recipes" / "lmms-eval"
QUESTIONS = ("what is it ?", "what is in it ?", "what do you notice in it ?")
FEATURES = {"image": datasets.Image(), "audio": datasets.Audio(), "video": datasets.Video()}


@pytest.fixture(scope="module")
def adapters(tiny_adapter_folders, tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> dict[str, str]:
    """A VQA adapter of each sense whose strong random weights make each medium change the answer."""
    encoders = {"audio": tiny_audio_model("wav2vec2", tmp_path_factory.mktemp("wav2vec2")),
                "video": f"frames:{tiny_vit_folder}"}
    folders = {"image": tiny_adapter_folders["shapes"]}
    for seed, (medium, encoder) in enumerate(encoders.items(), start=3):
        config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=encoder, num_frames=4 if medium == "video" else None,
                               num_blocks=2, inject_layers=[2, 3], task="vqa")
        folders[medium] = save_steered_adapter(config, seed, tmp_path_factory.mktemp(f"adapter-{medium}"))
    return folders


def write_media(medium: str, folder: Path) -> list[str]:
    """Four files of ``medium`` that differ: coloured squares, tones, clips of different lengths."""
    folder.mkdir()
    if medium == "image":
        paths = [folder / f"{name}.png" for name in COLOURS]
        for path, colour in zip(paths, COLOURS.values(), strict=True):
            path.write_bytes(png(colour))
        return [str(path) for path in paths]
    if medium == "audio":
        return [write_wav(folder / f"{hz}.wav", tone(hz, 0.5)) for hz in (220, 440, 880, 1760)]
    return [write_clip(folder / f"{count}.mp4", count) for count in (4, 8, 16, 24)]


def save_vqa_set(adapter: str, medium: str, media: list[str], folder: Path) -> None:
    """Each medium asked three ways; a question's reference is the adapter's own answer on alternate rows and a
    different one on the others, so that a score equal to the other tool's is neither 0 nor 100 by chance."""
    paths = [path for path in media for _ in QUESTIONS]
    questions = [question for _ in media for question in QUESTIONS]
    answers = load(adapter, weights="float32").ask(paths, questions)
    references = [[answer] if row % 2 else [answer + " not"] for row, answer in enumerate(answers)]
    # The media's bytes as they are, then typed (encoding a sound through ``datasets`` would need torchcodec).
    rows = datasets.Dataset.from_dict(
        {medium: [{"bytes": Path(path).read_bytes(), "path": Path(path).name} for path in paths],
         "question": questions, "answers": references, "question_id": [str(row) for row in range(len(paths))]},
    ).cast_column(medium, FEATURES[medium])
    datasets.DatasetDict({"test": rows}).save_to_disk(str(folder))


def sensorium_eval(adapter: str, dataset: Path, predictions: Path) -> dict[str, dict]:
    """``sensorium eval``'s records by question id."""
    main(["eval", adapter, "--data", f"hf:path={dataset},split=test", "--dtype", "float32", "--batch-size", "4",
          "--predictions", str(predictions)])
    return {record["question_id"]: record for record in map(json.loads, predictions.read_text().splitlines())}


def lmms_eval(adapter: str, workdir: Path) -> tuple[float, dict[str, str]]:
    """lmms-eval's command line, offline, in ``workdir`` (where the task finds data/lmms-eval/vqa): its score and
    its answer to each question by row."""
    out = workdir / "lmms-eval"
    environment = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "sensorium",
                    "--model_args", f"adapter={adapter},dtype=float32", "--tasks", "sensorium_vqa",
                    "--include_path", str(RECIPES), "--batch_size", "4", "--output_path", str(out), "--log_samples"],
                   cwd=workdir, env=environment, check=True, timeout=300)
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("*_samples_sensorium_vqa.jsonl")).read_text().splitlines()]
    answers = {str(sample["doc_id"]): sample["filtered_resps"] for sample in samples}
    return results["results"]["sensorium_vqa"]["accuracy,none"], answers


@pytest.mark.parametrize("medium", ["image", "audio", "video"])
def test_lmms_eval_scores_an_adapter_as_sensorium_eval_does(adapters, medium, tmp_path):
    adapter, dataset = adapters[medium], tmp_path / "data" / "lmms-eval" / "vqa"
    save_vqa_set(adapter, medium, write_media(medium, tmp_path / "media"), dataset)

    records = sensorium_eval(adapter, dataset, tmp_path / "predictions.jsonl")
    score, answers = lmms_eval(adapter, tmp_path)

    assert answers == {question_id: record["prediction"] for question_id, record in records.items()}
    assert score == pytest.approx(summarize(records.values()).overall.accuracy, abs=1e-9)
    assert 0 < score < 100


def test_gen_kwargs_keep_the_adapters_decoding_unless_they_sample_or_bound_it():
    assert decoding({"until": ["\n\n"], "do_sample": False}) == ({}, ["\n\n"])
    assert decoding({"until": "ASSISTANT:", "max_new_tokens": 8, "temperature": 0}) == ({"max_new_tokens": 8},
                                                                                         ["ASSISTANT:"])
    assert decoding({"temperature": 0.7, "top_p": 0.9}) == (
        {"do_sample": True, "num_beams": 1, "temperature": 0.7, "top_p": 0.9}, [])


class Request:
    """What ``request_batches`` reads of an lmms-eval Instance: its args."""

    def __init__(self, context: str, gen_kwargs: dict, task: str = "vqa") -> None:
        self.args = (context, gen_kwargs, None, 0, task, "test")


def test_requests_are_batched_by_task_and_gen_kwargs_then_question_length():
    requests = [Request("a long question ?", {}), Request("short ?", {}), Request("mid size ?", {}),
                Request("other ?", {"max_new_tokens": 3}), Request("x ?", {}, task="other")]
    assert list(request_batches(requests, 2)) == [[1, 2], [0], [3], [4]]


def test_a_blind_adapter_is_scored_without_its_media_as_it_was_trained(tiny_lm_folder, tiny_vit_folder, tmp_path):
    config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=2, inject_layers=[2, 3],
                           task="vqa", training={"training": {"blind": True}})
    adapter = save_steered_adapter(config, 5, tmp_path / "blind")
    images = [Image.new("RGB", (32, 32), colour) for colour in COLOURS.values()]
    model = Sensorium(adapter, dtype="float32", batch_size=3)
    model.task_dict = {"colours": {"test": [{"image": image} for image in images]}}
    requests = [Instance("generate_until", ("what is it ?", {"until": ["\n\n"]}, lambda doc: [doc["image"]], row,
                                            "colours", "test"), idx=0,
                         metadata={"task": "colours", "doc_id": row, "repeats": 1}) for row in range(len(images))]

    answers = model.generate_until(requests)

    seen = load(adapter, weights="float32")
    blind = seen.generate(torch.zeros_like(seen.encode(images)), ["what is it ?"] * len(images))
    assert answers == blind and answers != seen.ask(images, ["what is it ?"] * len(images))


def test_a_misspelt_model_arg_is_refused_not_ignored():
    with pytest.raises(TypeError, match="dtpye"):
        Sensorium.create_from_arg_string("adapter=somewhere,dtpye=float32")
