"""easy-vqa: a small real VQA set shipped on PyPI (64x64 images of one coloured shape)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..zoo import package_file
from .examples import Example

SPLITS = ("train", "test")
SHAPES = {"circle", "rectangle", "triangle"}
# Every shape is drawn in one of these exact colours on a pale, random background.
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
          "gray": (128, 128, 128), "yellow": (255, 255, 0), "teal": (0, 128, 128), "brown": (165, 42, 42)}
# How much of its bounding box a shape fills: a rectangle all of it, a circle pi/4, a triangle half.
_FILL_THRESHOLDS = ((0.64, "triangle"), (0.9, "circle"))


def answer_type(answer: str) -> str:
    if answer in {"yes", "no"}:
        return "yes/no"
    return "shape" if answer in SHAPES else "color"


def read(split: str = "train") -> list[Example]:
    if split not in SPLITS:
        raise ValueError(f"easy-vqa has splits 'train' and 'test', not '{split}'")
    questions = _questions_file(split)
    images = questions.parent / "images"
    return [
        Example(media=str(images / f"{image_id}.png"), question=text, answers=[answer],
                   answer_type=answer_type(answer), question_id=f"{split}-{index}")
        for index, (text, answer, image_id) in enumerate(json.loads(questions.read_text()))
    ]


def _questions_file(split: str) -> Path:
    return package_file("easy_vqa", f"data/{split}/questions.json", "easy-vqa==1.0")


def images_folder(split: str) -> Path | None:
    """The resolved folder of a split's images; None where easy-vqa is not installed."""
    try:
        return (_questions_file(split).parent / "images").resolve()
    except FileNotFoundError:
        return None


def content(path: str | Path) -> tuple[str, str]:
    """(colour, shape) of the one shape an easy-vqa image shows, read from its pixels.

    The shape is the largest area of one of the eight exact colours; its kind follows from how much of its
    bounding box it fills, which is reliable except for the tiniest shapes (a few pixels wide).
    """
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    masks = {name: (pixels == rgb).all(-1) for name, rgb in COLORS.items()}
    color = max(masks, key=lambda name: masks[name].sum())
    rows, columns = np.nonzero(masks[color])
    fill = masks[color].sum() / ((rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1))
    shape = next((name for limit, name in _FILL_THRESHOLDS if fill < limit), "rectangle")
    return color, shape


def truths(split: str) -> dict[str, str]:
    """What each image of a split shows, as text ('a red circle'), for the text oracle (``sensorium.oracle``).

    The questions about an image fix its colour and shape (answers name them; a yes/no answer confirms or
    excludes the attribute its question names); the pixels (``content``) settle what its questions leave open.
    """
    file = _questions_file(split)
    questions = json.loads(file.read_text())
    possible: dict[str, dict[str, set[str]]] = {}
    for text, answer, image_id in questions:
        facts = possible.setdefault(image_id, {"color": set(COLORS), "shape": set(SHAPES)})
        words = text.rstrip("?").split()
        named = {"color": [w for w in words if w in COLORS], "shape": [w for w in words if w in SHAPES]}
        if answer in ("yes", "no"):
            present = (answer == "yes") != ("not" in words or "no" in words)
            for kind, names in named.items():
                if names:
                    facts[kind] = facts[kind] & {names[0]} if present else facts[kind] - {names[0]}
        else:
            facts[answer_type(answer)] = {answer}
            other = "color" if answer in SHAPES else "shape"
            if named[other]:  # "what is the red shape?", "what color is the circle?"
                facts[other] = {named[other][0]}
    images = file.parent / "images"
    described = {}
    for image_id, facts in possible.items():
        path = images / f"{image_id}.png"
        if len(facts["color"]) != 1 or len(facts["shape"]) != 1:
            seen = dict(zip(("color", "shape"), content(path), strict=True))
            facts = {kind: values if len(values) == 1 else {seen[kind]} for kind, values in facts.items()}
        described[str(path)] = f"a {next(iter(facts['color']))} {next(iter(facts['shape']))}"
    return described
