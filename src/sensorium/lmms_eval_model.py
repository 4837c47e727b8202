"""An adapter as an lmms-eval model: ``lmms-eval --model sensorium --model_args adapter=DIR[,dtype=...]``.

lmms-eval finds it through its own extension point, the ``lmms_eval.models`` entry points (pyproject.toml names
``MANIFEST``), so that lmms-eval's benchmarks score an adapter without a copy of lmms-eval patched to know it.
Requests are answered as ``sensorium eval`` answers its questions: batched by question length, the adapter's own
decoding unless the task asks for other, a blind baseline without its media; ``until`` cuts the answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .media.audio import Waveform
from .model import load
from .serve.chat import cut_at_stop
from .trained import recorded_recipe

MANIFEST = ModelManifest(model_id="sensorium", simple_class_path="sensorium.lmms_eval_model.Sensorium")


class Sensorium(lmms):
    """An adapter answering lmms-eval's ``generate_until`` requests about an image, a sound or a video.

    ``dtype`` is ``sensorium eval``'s ``--dtype`` (auto, float32, bfloat16, float16, int8); ``device`` (lmms-eval's
    ``--device``) places the frozen LM as ``--device-map`` does (default: the CPU); ``batch_size`` is lmms-eval's
    ``--batch_size``, a number (``max_batch_size``, the bound of lmms-eval's automatic sizes, has nothing to bound).
    Other model_args are refused, so that a misspelt one is not silently ignored.
    """

    is_simple = True

    def __init__(self, adapter: str, dtype: str = "auto", device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None) -> None:
        super().__init__()
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive number of requests, not {batch_size!r}")
        self.model = load(adapter, weights=dtype, device_map=device)
        training = recorded_recipe(self.model.config, Path(adapter)).training
        if training.oracle:
            raise ValueError(f"{adapter}: a text-oracle adapter reads each medium's content as text, which lmms-eval "
                             "tasks do not give: score it with sensorium eval")
        self.blind = training.blind  # scored as it was trained: without its media
        self.batch_size = int(batch_size)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in the requests' order, computed a batch of one task's alike requests at a time."""
        answers: list[str | None] = [None] * len(requests)
        batches = list(request_batches(requests, self.batch_size))
        for batch in tqdm(batches, desc="sensorium", unit="batch"):
            texts = self.answer([requests[index].args for index in batch])
            for index, text in zip(batch, texts, strict=True):
                answers[index] = text
        return answers

    def answer(self, batch: list[tuple]) -> list[str]:
        """The answers to a batch of ``generate_until`` arguments that share their task, split and gen_kwargs."""
        contexts, all_gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*batch, strict=True)
        docs = self.task_dict[tasks[0]][splits[0]]
        media = [one_medium(doc_to_visual[0](docs[doc_id]), doc_id) for doc_id in doc_ids]
        features = self.model.encode([as_sensorium_medium(medium) for medium in media])
        if self.blind:
            features = torch.zeros_like(features)
        options, stops = decoding(all_gen_kwargs[0])
        questions = list(contexts) if self.model.config.does("vqa") else [""] * len(contexts)
        return [cut_at_stop(text, stops)[0] for text in self.model.generate(features, questions, **options)]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("sensorium answers generate_until tasks only; loglikelihood (multiple-choice by "
                                  "scoring each choice) is not implemented")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("sensorium answers one question per medium: multi-round tasks are not supported")


def request_batches(requests: list[Instance], size: int) -> Iterator[list[int]]:
    """Indices of requests in batches of at most ``size``: one task, split and gen_kwargs to a batch, each group's
    requests in order of question length (the order ``sensorium eval`` batches in: less padding, same batches)."""
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        _, gen_kwargs, _, _, task, split = request.args
        groups.setdefault(json.dumps([task, split, gen_kwargs], sort_keys=True, default=str), []).append(index)
    for indices in groups.values():
        ordered = sorted(indices, key=lambda index: len(requests[index].args[0]))
        yield from (ordered[start:start + size] for start in range(0, len(ordered), size))


def one_medium(visuals: list[Any], doc_id: int) -> Any:
    """The one image, sound or video of a document: an adapter reads one medium per question."""
    if len(visuals) != 1:
        raise ValueError(f"document {doc_id}: {len(visuals)} media; a sensorium adapter reads exactly one")
    return visuals[0]


def as_sensorium_medium(medium: Any) -> Any:
    """A medium in lmms-eval's forms as the encoder takes it: a PIL image upright in RGB (as sensorium reads image
    files), lmms-eval's audio dict ``{"array", "sampling_rate"}`` as a Waveform, a file path (a video) as it is."""
    if isinstance(medium, Image.Image):
        return ImageOps.exif_transpose(medium).convert("RGB")
    if isinstance(medium, dict) and {"array", "sampling_rate"} <= set(medium):
        samples = np.asarray(medium["array"], dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio of shape {samples.shape}: mono samples (one dimension) expected")
        return Waveform(samples, int(medium["sampling_rate"]))
    if isinstance(medium, (str, Path)):
        return str(medium)
    raise ValueError(f"a medium of type {type(medium).__name__}: expected a PIL image, an audio dict with 'array' "
                     "and 'sampling_rate', or a file path")


def decoding(gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """generate() options and stop strings from a task's gen_kwargs. What a task leaves unset (and greedy decoding,
    temperature 0) keeps the adapter's own decoding, as ``sensorium eval`` decodes; a temperature above 0 samples."""
    options = {key: int(gen_kwargs[key]) for key in ("max_new_tokens", "num_beams") if gen_kwargs.get(key)}
    temperature = float(gen_kwargs.get("temperature") or 0)
    if temperature > 0 or gen_kwargs.get("do_sample"):
        options.update(do_sample=True, num_beams=1)
        options.update({"temperature": temperature} if temperature > 0 else {})
        options.update({"top_p": float(gen_kwargs["top_p"])} if gen_kwargs.get("top_p") is not None else {})
    until = gen_kwargs.get("until") or []
    return options, [until] if isinstance(until, str) else list(until)
