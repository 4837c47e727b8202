"""Shared fixtures: tiny randomly initialised models and a tiny tokenizer, made in the test itself."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from sensorium.lm import NATIVE_BF16_ENV
from sensorium.testing import save_tiny_lm, save_tiny_vit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Converted packaged weights and feature caches of a test run never touch the user's cache.
os.environ["SENSORIUM_CACHE"] = tempfile.mkdtemp(prefix="sensorium-test-cache-")


def read_split(out: Path, kind: str, split: str) -> dict:
    """A generated benchmark's ``{kind}_{split}.json`` (captions, questions, annotations or plans)."""
    return json.loads((out / f"{kind}_{split}.json").read_text())


def qa_by_media(out: Path, split: str) -> dict[int, list[tuple[str, str, str]]]:
    """A generated split's (question, answer, type) triples by media id, joined from its two VQA files."""
    answers = {a["question_id"]: a for a in read_split(out, "annotations", split)["annotations"]}
    joined: dict[int, list[tuple[str, str, str]]] = {}
    for q in read_split(out, "questions", split)["questions"]:
        a = answers[q["question_id"]]
        joined.setdefault(q["image_id"], []).append((q["question"], a["multiple_choice_answer"], a["answer_type"]))
    return joined


def file_bytes(folder: Path) -> dict[Path, bytes]:
    """Every file under a folder by its relative path: two folders are equal when their files are byte-identical."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def few_threads():
    """Tiny models gain nothing from more threads, and on a busy machine spinning threads slow them 100-fold.

    SENSORIUM_TEST_THREADS sets another number, so that the suite can be run as a multi-threaded user runs it:
    no test may depend on how a reduction is split between threads.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SENSORIUM_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def emulated_bf16(monkeypatch):
    """``auto`` decides as on a CPU without native bf16 (float32 weights, no mixed precision) on whatever CPU runs
    the suite, so that a test gets the same formats on every machine; the tests of ``auto`` set either answer."""
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")


@pytest.fixture(scope="session")
def tiny_lm_folder(tmp_path_factory):
    """tiny_lm_folder(arch) -> folder with a random causal LM of that architecture and its tokenizer
    (sensorium.testing.save_tiny_lm), made once per session."""
    made = {}

    def make(arch: str):
        if arch not in made:
            made[arch] = save_tiny_lm(tmp_path_factory.mktemp(f"lm-{arch}"), arch)
        return made[arch]

    return make


@pytest.fixture(scope="session")
def tiny_vit_folder(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("vit"))


def save_steered_adapter(config, seed: int, folder: Path) -> str:
    """Save a new adapter whose strong random connector and prompt make the media and the adapter visibly
    change the words; its folder."""
    from sensorium import PerceptualLM

    torch.manual_seed(seed)
    model = PerceptualLM(config)
    with torch.no_grad():
        model.connector.linear.weight.normal_(0, 2.0)
        model.prompt.normal_(0, 1.0)
    model.save_pretrained(folder)
    return str(folder)


def tiny_training_recipe(model: dict, manifest: Path, out: Path, max_new_tokens: int):
    """Two training steps on a JSONL manifest, evaluated on the same manifest."""
    from sensorium.recipe import Recipe

    return Recipe.from_dict({
        "model": model,
        "data": {"train": {"format": "jsonl", "path": str(manifest)},
                 "eval": {"format": "jsonl", "path": str(manifest)}},
        "training": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1, "mixed_precision": "no",
                     "cache_workers": 0},
        "generation": {"max_new_tokens": max_new_tokens}, "out": str(out),
    })


@pytest.fixture(scope="session")
def tiny_adapter_folders(tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> dict[str, str]:
    """Two saved adapters over the same tiny LM and ViT: "shapes" answers questions, "captions" captions."""
    from sensorium import AdapterConfig

    folders = {}
    for seed, (name, task) in enumerate([("shapes", "vqa"), ("captions", "caption")], start=1):
        config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=3,
                               inject_layers=[1, 2, 3], task=task)
        folders[name] = save_steered_adapter(config, seed, tmp_path_factory.mktemp(f"adapter-{name}"))
    return folders


@pytest.fixture
def image(tmp_path) -> str:
    """A small blue PNG."""
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "blue.png")
    return str(tmp_path / "blue.png")


def one_line_error(capsys) -> str:
    """The CLI's error: the last line on stderr (progress bars may come before it), whole on that one line."""
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sensorium: error: "), err
    return err


def save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, folder: Path, **settings) -> str:
    """An untrained adapter over the tiny Llama and ViT (2 blocks into layers 2 and 3), saved; its folder."""
    from sensorium import AdapterConfig, PerceptualLM

    config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=2, inject_layers=[2, 3],
                           **settings)
    PerceptualLM(config).save_pretrained(folder)
    return str(folder)
