"""easy-vqa: a small real VQA set shipped on PyPI (64x64 images of one coloured shape)."""

from __future__ import annotations

import json

from ..zoo import package_file
from .examples import Example

SHAPES = {"circle", "rectangle", "triangle"}


def answer_type(answer: str) -> str:
    if answer in {"yes", "no"}:
        return "yes/no"
    return "shape" if answer in SHAPES else "color"


def read(split: str = "train") -> list[Example]:
    if split not in {"train", "test"}:
        raise ValueError(f"easy-vqa has splits 'train' and 'test', not '{split}'")
    questions = package_file("easy_vqa", f"data/{split}/questions.json", "easy-vqa==1.0")
    images = questions.parent / "images"
    return [
        Example(media=str(images / f"{image_id}.png"), question=text, answers=[answer],
                   answer_type=answer_type(answer), question_id=f"{split}-{index}")
        for index, (text, answer, image_id) in enumerate(json.loads(questions.read_text()))
    ]
