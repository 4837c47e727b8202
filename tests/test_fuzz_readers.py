"""Every reader of the user's files, fuzzed with hypothesis: truncations, bit flips, overwritten bytes and JSON
of the wrong shape give the reader's result or a one-line BadInputError naming the file, and nothing else.

Bounded so that the suite stays fast (``EXAMPLES`` per reader, about 1,700 in all); the module prints how many
inputs each reader was given and how many it refused. Hypothesis draws new inputs on every run.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save

from sensorium.config import CONFIG_NAME, QUESTIONS_NAME, AdapterConfig
from sensorium.data import Example, read_dataset
from sensorium.errors import BadInputError
from sensorium.media import load_audio, load_image, load_video
from sensorium.model import read_weights
from sensorium.recipe import Recipe, load_recipe
from sensorium.routing import read_question_stats

EXAMPLES = {"image": 200, "audio": 120, "video": 60, "jsonl": 150, "vqav2": 150, "coco": 100, "karpathy": 100,
            "gqa": 100, "msrvtt-qa": 75, "msrvtt-caption": 75, "audiocaps": 75, "clotho": 75,
            "adapter_config": 200, "adapter_weights": 100, "question_stats": 100, "recipe": 150}
TRIED: Counter = Counter()
REFUSED: Counter = Counter()


def fuzz(reader: str):
    """Hypothesis settings of one reader: its example budget, no deadline (the machine may be busy)."""
    return settings(max_examples=EXAMPLES[reader], deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    """Print, past pytest's output capture, how many inputs each reader was given and how many it refused."""
    yield
    if TRIED:
        counts = ", ".join(f"{name} {TRIED[name]} ({REFUSED[name]} refused)" for name in EXAMPLES if TRIED[name])
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            print(f"\nfuzzed readers, inputs tried: {counts}; {sum(TRIED.values())} in all")


def reads_or_refuses(reader: str, read, names: list[Any]) -> Any:
    """``read()``'s result, or None when it refused with one line that names one of ``names`` (files, folders)."""
    TRIED[reader] += 1
    try:
        return read()
    except BadInputError as error:
        message = str(error)
        assert "\n" not in message, message
        assert any(str(name) in message for name in names), message
        REFUSED[reader] += 1
        return None


# ---- strategies -------------------------------------------------------------------------------
@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` cut short, with bits flipped, with a run of bytes overwritten, or several of these at once."""
    damage = draw(st.lists(st.sampled_from(["truncate", "flip", "overwrite"]), min_size=1, max_size=3))
    data = bytearray(data)
    for kind in damage:
        if not data:
            break
        if kind == "truncate":
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif kind == "flip":
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        else:
            start = draw(st.integers(0, len(data) - 1))
            patch = draw(st.binary(min_size=1, max_size=32))
            data[start:start + len(patch)] = patch
    return bytes(data)


JSON_SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)


def json_values(keys: list[str]) -> st.SearchStrategy:
    """Any JSON value; objects mostly use the format's own keys, so that wrong types reach the fields."""
    key = st.sampled_from(keys) | st.text(max_size=6) if keys else st.text(max_size=6)
    return st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(key, inner, max_size=5), max_leaves=12)


@st.composite
def reshaped(draw, document: Any, keys: list[str]) -> Any:
    """``document`` with one to three of its values, anywhere in it (the whole included), replaced by any JSON."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        parent, key, node = None, None, document
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            parent, key = node, draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            node = node[key]
        value = draw(json_values(keys))
        if parent is None:
            document = value
        else:
            parent[key] = value
    return document


def json_file(document: Any, keys: list[str]) -> st.SearchStrategy:
    """The bytes of a JSON file: the document damaged as bytes, or reshaped and written whole."""
    data = json.dumps(document).encode()
    return damaged(data) | reshaped(document, keys).map(lambda value: json.dumps(value).encode())


def keys_of(document: Any) -> list[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.update(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return sorted(found)


def assert_examples(examples: list) -> None:
    """What a reader gives is usable: examples of text questions and text answers."""
    for example in examples:
        assert isinstance(example, Example)
        assert isinstance(example.media, str) and isinstance(example.question, str)
        assert isinstance(example.answers, list) and all(isinstance(answer, str) for answer in example.answers)


# ---- media ------------------------------------------------------------------------------------
def encoded_image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((24, 16), 40).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = [encoded_image(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP")]


@fuzz("image")
@given(data=st.sampled_from(IMAGES).flatmap(damaged))
def test_damaged_images(data, tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    image = reads_or_refuses("image", lambda: load_image(path), [path])
    if image is not None:
        assert image.mode == "RGB" and image.width * image.height > 0
    stream = reads_or_refuses("image", lambda: load_image(io.BytesIO(data), name="upload"), ["upload"])
    assert (stream is None) == (image is None)


def encoded_sound(fmt: str) -> bytes:
    buffer = io.BytesIO()
    samples = np.sin(np.linspace(0, 200, 4000)).astype(np.float32)
    soundfile.write(buffer, samples, 8000, format=fmt)
    return buffer.getvalue()


SOUNDS = [encoded_sound(fmt) for fmt in ("WAV", "FLAC", "OGG")]


@fuzz("audio")
@given(data=st.sampled_from(SOUNDS).flatmap(damaged))
def test_damaged_sounds(data, tmp_path):
    path = tmp_path / "sound.bin"
    path.write_bytes(data)
    waveform = reads_or_refuses("audio", lambda: load_audio(path, sampling_rate=16000), [path])
    if waveform is not None:
        assert waveform.sampling_rate == 16000 and waveform.samples.dtype == np.float32
        assert np.isfinite(waveform.samples).all()


def encoded_clip() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for index in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * index, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


CLIP = encoded_clip()


@fuzz("video")
@given(data=damaged(CLIP))
def test_damaged_videos(data, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    frames = reads_or_refuses("video", lambda: load_video(path, num_frames=3), [path])
    if frames is not None:
        assert len(frames) == 3 and all(frame.mode == "RGB" for frame in frames)


# ---- annotation files -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder holding the media every fuzzed annotation file names, so readers get past the folder checks."""
    folder = tmp_path_factory.mktemp("media")
    for name in ("a.png", "COCO_val2014_000000000042.jpg", "img1.jpg", "video7.mp4", "Yclip1.wav", "c.wav"):
        (folder / name).write_bytes(b"")
    return folder


def read_file(reader: str, folder: Path, data: bytes, name: str, spec: dict[str, Any], also: list[Any]) -> None:
    """``data`` written as ``folder/name``, then read by the data spec; what it gives must be usable."""
    path = folder / name
    path.write_bytes(data)
    examples = reads_or_refuses(reader, lambda: read_dataset(spec), [path, *also])
    if examples is not None:
        assert_examples(examples)


MANIFEST = [{"media": "a.png", "question": "what ?", "answers": ["x", "y"], "answer_type": "color", "id": 3},
            {"media": "a.png", "question": "is it ?", "answer": "yes"},
            {"media": "a.png", "captions": ["a b", "c"]}]


def manifest_bytes(lines: list) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@fuzz("jsonl")
@given(data=damaged(manifest_bytes(MANIFEST))
       | reshaped(MANIFEST, keys_of(MANIFEST)).map(lambda lines: manifest_bytes(lines if isinstance(lines, list)
                                                                                 else [lines])))
def test_damaged_jsonl_manifests(data, media):
    read_file("jsonl", media, data, "set.jsonl", {"format": "jsonl", "path": str(media / "set.jsonl")}, [])


VQA_QUESTIONS = {"data_subtype": "val2014", "questions": [
    {"question_id": 1, "image_id": 42, "question": "what color ?"},
    {"question_id": "2", "image_id": 42, "question": "how many ?"}]}
VQA_ANNOTATIONS = {"annotations": [
    {"question_id": 1, "answer_type": "other", "answers": [{"answer": "red", "answer_id": 1}] * 3},
    {"question_id": "2", "answer_type": "number", "answers": [{"answer": "2"}]}]}


@fuzz("vqav2")
@given(which=st.sampled_from(["questions", "annotations"]), data=st.data())
def test_damaged_vqa_v2_files(which, data, media):
    document = VQA_QUESTIONS if which == "questions" else VQA_ANNOTATIONS
    (media / "q.json").write_text(json.dumps(VQA_QUESTIONS))
    (media / "a.json").write_text(json.dumps(VQA_ANNOTATIONS))
    damage = data.draw(json_file(document, keys_of(document)))
    spec = {"format": "vqav2", "questions": str(media / "q.json"), "annotations": str(media / "a.json"),
            "images": str(media)}
    read_file("vqav2", media, damage, "q.json" if which == "questions" else "a.json", spec, [])


COCO = {"images": [{"id": 42, "file_name": "a.png"}, {"id": 7, "file_name": "img1.jpg"}],
        "annotations": [{"image_id": 42, "caption": "a red square"}, {"image_id": 7, "caption": "blue"}]}


@fuzz("coco")
@given(data=json_file(COCO, keys_of(COCO)))
def test_damaged_coco_files(data, media):
    spec = {"format": "coco", "annotations": str(media / "coco.json"), "images": str(media)}
    read_file("coco", media, data, "coco.json", spec, [])


KARPATHY = {"images": [
    {"split": "test", "cocoid": 42, "filepath": "", "filename": "a.png", "sentences": [{"raw": "a red square"}]},
    {"split": "restval", "imgid": 7, "filename": "img1.jpg", "sentences": [{"raw": "blue"}, {"raw": "sky"}]}]}


@fuzz("karpathy")
@given(data=json_file(KARPATHY, keys_of(KARPATHY)), split=st.sampled_from(["test", "train"]))
def test_damaged_karpathy_files(data, split, media):
    spec = {"format": "karpathy", "path": str(media / "karpathy.json"), "images": str(media), "split": split}
    read_file("karpathy", media, data, "karpathy.json", spec, [])


GQA = {"q1": {"imageId": "img1", "question": "what is it ?", "answer": "cat", "types": {"structural": "query"}},
       "q2": {"imageId": "img1", "question": "is it red ?"}}


@fuzz("gqa")
@given(data=json_file(GQA, keys_of(GQA)))
def test_damaged_gqa_files(data, media):
    spec = {"format": "gqa", "questions": str(media / "gqa.json"), "images": str(media)}
    read_file("gqa", media, data, "gqa.json", spec, [])


MSRVTT_QA = [{"video_id": 7, "question": "what is moving ?", "answer": "ball", "id": 0},
             {"video": "video7.mp4", "question": "who ?", "answer": "man"}]
MSRVTT_CAPTIONS = {"videos": [{"video_id": "video7", "split": "test"}],
                   "sentences": [{"video_id": "video7", "caption": "a ball rolls"}]}


@fuzz("msrvtt-qa")
@given(data=json_file(MSRVTT_QA, keys_of(MSRVTT_QA)))
def test_damaged_msrvtt_qa_files(data, media):
    spec = {"format": "msrvtt-qa", "questions": str(media / "msrvtt-qa.json"), "videos": str(media)}
    read_file("msrvtt-qa", media, data, "msrvtt-qa.json", spec, [media])


@fuzz("msrvtt-caption")
@given(data=json_file(MSRVTT_CAPTIONS, keys_of(MSRVTT_CAPTIONS)), split=st.sampled_from(["test", None]))
def test_damaged_msrvtt_caption_files(data, split, media):
    spec = {"format": "msrvtt-caption", "path": str(media / "msrvtt.json"), "videos": str(media), "split": split}
    read_file("msrvtt-caption", media, data, "msrvtt.json", spec, [])


def csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


AUDIOCAPS = [["audiocap_id", "youtube_id", "start_time", "caption"], ["1", "clip1", "0", "a dog barks"],
             ["2", "clip1", "0", "barking"], ["3", "other", "30", "wind"]]
CLOTHO = [["file_name", *(f"caption_{n}" for n in range(1, 6))], ["c.wav", "a", "b", "c", "d", "e"]]
CELLS = st.text(max_size=12) | st.sampled_from(["audiocap_id", "youtube_id", "file_name", "caption_1", '"', ","])


def csv_file(rows: list[list[str]]) -> st.SearchStrategy:
    """A CSV damaged as bytes, or with rows of cells of any text (header included)."""
    rewritten = st.lists(st.lists(CELLS, max_size=7), max_size=5).map(lambda extra: csv_bytes(rows[:1] + extra))
    return damaged(csv_bytes(rows)) | rewritten | st.lists(st.lists(CELLS, max_size=7), max_size=5).map(csv_bytes)


@fuzz("audiocaps")
@given(data=csv_file(AUDIOCAPS))
def test_damaged_audiocaps_files(data, media):
    spec = {"format": "audiocaps", "csv": str(media / "audiocaps.csv"), "audio": str(media)}
    read_file("audiocaps", media, data, "audiocaps.csv", spec, [media])


@fuzz("clotho")
@given(data=csv_file(CLOTHO))
def test_damaged_clotho_files(data, media):
    spec = {"format": "clotho", "csv": str(media / "clotho.csv"), "audio": str(media)}
    read_file("clotho", media, data, "clotho.csv", spec, [media])


# ---- adapters and recipes ---------------------------------------------------------------------
CONFIG = dataclasses.asdict(AdapterConfig(encoder_blocks=[8, 10], inject_layers=[20, 21]))


@fuzz("adapter_config")
@given(data=json_file(CONFIG, keys_of(CONFIG)))
def test_damaged_adapter_configs(data, tmp_path):
    (tmp_path / CONFIG_NAME).write_bytes(data)
    config = reads_or_refuses("adapter_config", lambda: AdapterConfig.load(tmp_path), [tmp_path / CONFIG_NAME])
    if config is not None:  # what loads is what the schema declares
        assert isinstance(config.num_blocks, int) and not isinstance(config.num_blocks, bool)
        assert config.num_blocks > 0 and isinstance(config.token_norm, bool) and isinstance(config.template, str)
        config.template.format(question="q")


WEIGHTS = save({"connector.linear.weight": torch.randn(4, 3), "prompt": torch.randn(1, 4)})


@fuzz("adapter_weights")
@given(data=damaged(WEIGHTS))
def test_damaged_adapter_weights(data, tmp_path):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(data)
    tensors = reads_or_refuses("adapter_weights", lambda: read_weights(path), [path])
    if tensors is not None:
        assert all(hasattr(tensor, "shape") for tensor in tensors.values())


QUESTION_STATS = save({"centroid": torch.randn(4), "spread": torch.tensor(1.5), "count": torch.tensor(12)})


@fuzz("question_stats")
@given(data=damaged(QUESTION_STATS))
def test_damaged_question_statistics(data, tmp_path):
    path = tmp_path / QUESTIONS_NAME
    path.write_bytes(data)
    stats = reads_or_refuses("question_stats", lambda: read_question_stats(tmp_path, 4), [path])
    if stats is not None:  # what loads is what routing reads: a finite centroid of the LM's width, a finite spread
        assert stats.centroid.shape == (4,) and torch.isfinite(stats.centroid).all()
        assert 0 <= stats.spread < float("inf") and stats.count >= 1


RECIPE = {"model": {"task": "vqa", "num_blocks": 6, "prompt_length": 1, "token_norm": True},
          "data": {"train": {"format": "easy-vqa", "split": "train"}},
          "training": {"batch_size": 32, "max_steps": 600, "lr": "3e-4", "mixed_precision": "auto", "blind": False},
          "generation": {"max_new_tokens": 10}, "out": "runs/x"}


@fuzz("recipe")
@given(data=damaged(yaml.safe_dump(RECIPE).encode())
       | reshaped(RECIPE, keys_of(RECIPE)).map(lambda values: yaml.safe_dump(values).encode()))
def test_damaged_recipes(data, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(data)
    recipe = reads_or_refuses("recipe", lambda: load_recipe(path), [path])
    if recipe is not None:
        assert isinstance(recipe, Recipe) and recipe.training.batch_size > 0 and recipe.training.max_steps > 0
        assert isinstance(recipe.training.lr, float) and isinstance(recipe.training.blind, bool)


# ---- what fuzzing found, kept as plain regression tests ---------------------------------------
def test_a_sound_whose_header_declares_billions_of_samples_reads_what_it_holds(tmp_path):
    """A bit flipped in a FLAC header's sample count (2**33 + 4000) made the reader allocate 32 GiB first."""
    data = bytearray(SOUNDS[1])
    assert data[:4] == b"fLaC"
    data[21] |= 0x02  # bit 33 of STREAMINFO's total samples
    (tmp_path / "huge.flac").write_bytes(data)
    assert soundfile.info(str(tmp_path / "huge.flac")).frames == 2**33 + 4000
    tracemalloc.start()
    try:
        waveform = load_audio(tmp_path / "huge.flac")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(waveform.samples) == 4000 and peak < 50 * 2**20


def test_a_video_with_a_tag_that_is_not_utf8_reads(tmp_path):
    """FFmpeg hands tags over as bytes; a title in another encoding made opening the clip fail."""
    with av.open(str(tmp_path / "tagged.mp4"), "w") as container:
        container.metadata["title"] = "TITLEXYZ"
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = (tmp_path / "tagged.mp4").read_bytes()
    assert data.count(b"TITLEXYZ") == 1
    (tmp_path / "tagged.mp4").write_bytes(data.replace(b"TITLEXYZ", b"\xff\xfe\xfdXYZ\xc3\x28"))
    assert len(load_video(tmp_path / "tagged.mp4", num_frames=2)) == 2


def test_a_csv_row_shorter_than_its_header_is_named(tmp_path, media):
    (tmp_path / "short.csv").write_bytes(csv_bytes(AUDIOCAPS[:2] + [["4", "clip9"]]))
    with pytest.raises(BadInputError, match=r"short.csv:3: no value for start_time, caption"):
        read_dataset({"format": "audiocaps", "csv": str(tmp_path / "short.csv"), "audio": str(media)})


def test_msrvtt_sentences_that_are_not_a_list_are_named(tmp_path, media):
    (tmp_path / "msrvtt.json").write_text(json.dumps({**MSRVTT_CAPTIONS, "sentences": None}))
    with pytest.raises(BadInputError, match=r"msrvtt.json: 'sentences' must be a list"):
        read_dataset({"format": "msrvtt-caption", "path": str(tmp_path / "msrvtt.json"), "videos": str(media)})
