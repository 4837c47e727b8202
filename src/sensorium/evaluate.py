"""Evaluation: generate in batches, then score with the task's standard metrics.

VQA answers are scored per question with the official VQA accuracy; captions are scored as a set with
the COCO caption metrics (BLEU, ROUGE-L, CIDEr, METEOR) of pycocoevalcap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import AdapterConfig
from .data import Example
from .errors import BadInputError
from .metrics import CaptionReport, VQAReport, score_captions, summarize, vqa_accuracy, write_coco_results
from .model import PerceptualLM


def predict_all(model: PerceptualLM, examples: list[Example], features: torch.Tensor, row_of: dict[str, int],
                batch_size: int = 64, generation: dict[str, Any] | None = None,
                progress: bool = True) -> list[dict[str, Any]]:
    """One record per example: its question, prediction and references (and VQA accuracy).

    Each task's examples are decoded apart (a multitask adapter's questions and captions decode differently).
    """
    records = []
    for batch in tqdm(eval_batches(examples, batch_size), desc="evaluating", unit="batch", disable=not progress):
        batch_features = features[[row_of[e.media] for e in batch]]
        predictions = model.generate(batch_features, [e.question for e in batch], contexts(batch),
                                     **(generation or {}))
        for example, prediction in zip(batch, predictions, strict=True):
            record = {"question_id": example.question_id, "media": example.media, "question": example.question,
                      "prediction": prediction, "answers": example.answers, "answer_type": example.answer_type}
            if posed_task(example) == "vqa":
                record["accuracy"] = vqa_accuracy(prediction, example.answers) if example.answers else None
            records.append(record)
    return records


def eval_batches(examples: list[Example], batch_size: int) -> list[list[Example]]:
    """The batches ``predict_all`` decodes: each task's examples apart, ordered by question length (similar
    lengths batched together waste less padding), stably."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].question))
    return [batch for group in by_task([examples[i] for i in order]).values()
            for batch in (group[start:start + batch_size] for start in range(0, len(group), batch_size))]


def posed_task(item: Example | dict[str, Any]) -> str:
    """The task an example (or a prediction record) poses: a caption to write, or a question to answer."""
    answer_type = item.answer_type if isinstance(item, Example) else item["answer_type"]
    return "caption" if answer_type == "caption" else "vqa"


def by_task(items: list) -> dict[str, list]:
    """Examples or records grouped by ``posed_task``, in order of first appearance; order kept within a task."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(posed_task(item), []).append(item)
    return groups


def scoring_task(config: AdapterConfig, items: list) -> str:
    """The one task of a data set an adapter is scored on; a one-line error for a set of the other task or of both."""
    tasks = list(by_task(items))
    if len(tasks) != 1:
        raise BadInputError("the data mixes questions and captions: score each task's data apart")
    if not config.does(tasks[0]):
        raise BadInputError(f"a {config.task} adapter scored on {tasks[0]} data")
    return tasks[0]


def contexts(examples: list[Example]) -> list[str] | None:
    """The text each example's prompt starts with (the text oracle's), or None where none has one."""
    texts = [e.extra.get("context", "") for e in examples]
    return texts if any(texts) else None


def has_references(records: list[dict[str, Any]]) -> bool:
    """Whether any record can be scored: data without references (VQA v2 questions without annotations, a COCO
    test split) is answered, not scored, and that is no error."""
    return any(record["answers"] for record in records)


def report(task: str, records: list[dict[str, Any]]) -> VQAReport | CaptionReport:
    """The task's report over the records that have references (see ``has_references``: at least one)."""
    if task == "caption":
        scored = [r for r in records if r["answers"]]
        return score_captions({r["question_id"]: r["prediction"] for r in scored},
                              {r["question_id"]: r["answers"] for r in scored})
    return summarize([r for r in records if r["accuracy"] is not None])


def headline_name(task: str) -> str:
    """The name of the one number a run is judged by."""
    return "CIDEr" if task == "caption" else "accuracy"


def headline(result: VQAReport | CaptionReport) -> tuple[str, float]:
    """The one number a run is judged by: VQA accuracy, or CIDEr for captions."""
    if isinstance(result, CaptionReport):
        return headline_name("caption"), result.scores["CIDEr"]
    return headline_name("vqa"), result.overall.accuracy


def predictions_name(task: str) -> str:
    return "captions_results.json" if task == "caption" else "predictions.jsonl"


def write_predictions(task: str, records: list[dict[str, Any]], path: str | Path) -> None:
    """JSONL records for VQA; the COCO results format ``[{"image_id", "caption"}]`` for captions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if task == "caption":
        write_coco_results(records, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
