"""The functions of sensorium_vqa.yaml: a Hugging Face dataset on disk read as ``sensorium eval --data hf:`` reads it.

The same columns are found (by their common names), each medium is the same file (embedded bytes written once
under sensorium's cache) decoded by the same readers, and each answer is scored by the same official VQA accuracy,
so that lmms-eval's score of an adapter is ``sensorium eval``'s on the same questions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sensorium.data import hf
from sensorium.media.audio import load_audio
from sensorium.media.image import load_image
from sensorium.metrics import vqa_accuracy
from sensorium.zoo import cache_dir


def process_docs(dataset: Any) -> Any:
    """The dataset with its media left undecoded: sensorium decodes them (``datasets`` would need torchcodec for
    sound and video, and decodes images without turning them upright)."""
    for column, feature in dataset.features.items():
        if getattr(feature, "decode", False):
            dataset = dataset.cast_column(column, dataclasses.replace(feature, decode=False))
    return dataset


def column(doc: dict[str, Any], role: str) -> str | None:
    """The document's column for ``role`` (image, audio, video, question, answers), found as ``hf:`` finds it."""
    return hf.find_column(role, None, list(doc), "document")


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The document's medium in lmms-eval's forms: a PIL image, an audio dict, or a video's path."""
    chosen = {role: column(doc, role) for role in hf.MEDIA}
    medium = hf.media_column(chosen, list(doc), "document")
    # A file name in a text column is taken from the working directory (where the task's dataset_path starts).
    path = hf.media_file(doc[medium], medium, Path.cwd(), cache_dir() / "hf-media", "document")
    if medium == "image":
        return [load_image(path)]
    if medium == "audio":
        waveform = load_audio(path)
        return [{"array": waveform.samples, "sampling_rate": waveform.sampling_rate}]
    return [path]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, str] | None = None) -> str:
    """The question as the dataset asks it: the adapter wraps it in the prompt template it was trained with."""
    kwargs = lmms_eval_specific_kwargs or {}
    return kwargs.get("pre_prompt", "") + doc[column(doc, "question")] + kwargs.get("post_prompt", "")


def references(doc: dict[str, Any]) -> list[str]:
    name = column(doc, "answers")
    return hf.strings(doc[name], name, "document")


def doc_to_target(doc: dict[str, Any]) -> str:
    return references(doc)[0]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The official VQA accuracy of the answer, in percent (the mean is the score ``sensorium eval`` prints)."""
    return {"accuracy": 100.0 * vqa_accuracy(results[0], references(doc))}
