"""Evaluation: generate answers in batches and score them with the VQA accuracy rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import Example
from .metrics import VQAReport, summarize, vqa_accuracy
from .model import PerceptualLM


def answer_all(model: PerceptualLM, examples: list[Example], features: torch.Tensor, row_of: dict[str, int],
               batch_size: int = 64, generation: dict[str, Any] | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
    """One record per example: question, prediction, references and its accuracy."""
    records = []
    # Similar lengths batched together waste less padding.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].question))
    for start in tqdm(range(0, len(order), batch_size), desc="evaluating", unit="batch", disable=not progress):
        batch = [examples[i] for i in order[start:start + batch_size]]
        batch_features = features[[row_of[e.media] for e in batch]]
        predictions = model.generate(batch_features, [e.question for e in batch], **(generation or {}))
        for example, prediction in zip(batch, predictions, strict=True):
            records.append({
                "question_id": example.question_id, "media": example.media, "question": example.question,
                "prediction": prediction, "answers": example.answers, "answer_type": example.answer_type,
                "accuracy": vqa_accuracy(prediction, example.answers) if example.answers else None,
            })
    return records


def report(records: list[dict[str, Any]]) -> VQAReport:
    return summarize([r for r in records if r["accuracy"] is not None])


def write_predictions(records: list[dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
