"""The example type every reader produces, image loading, and the dispatch on a data spec."""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError

# Data format -> module of sensorium.data whose ``read(**spec)`` returns the examples.
READERS = {"easy-vqa": "easyvqa", "jsonl": "jsonl", "vqav2": "vqav2", "gqa": "gqa"}
# Formats written on the command line as NAME:key=value,key=value.
KEYED_FORMATS = ("vqav2", "gqa")


@dataclass
class Example:
    """One training/evaluation item of any task: a question (empty for captioning) and its references."""

    media: str  # path of the image (or other media) file
    question: str
    answers: list[str]  # one reference (easy-vqa, GQA), ten human answers (VQA v2), or all captions
    answer_type: str = "other"  # the group a report scores separately (question type for VQA)
    question_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def load_image(path: str | Path) -> Image.Image:
    """An RGB image, or a BadInputError naming the file and why it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise BadInputError(f"{path}: file not found") from error
    except UnidentifiedImageError as error:
        raise BadInputError(f"{path}: not an image file (unrecognised format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInputError(f"{path}: unreadable image ({error})") from error


def parse_data_spec(text: str) -> dict[str, Any]:
    """Command-line form of a data spec.

    ``easy-vqa:test``, ``path/to/manifest.jsonl``, ``vqav2:questions=Q.json,annotations=A.json,images=DIR``
    or ``gqa:questions=Q.json,images=DIR``.
    """
    if text.endswith(".jsonl"):
        return {"format": "jsonl", "path": text}
    name, _, rest = text.partition(":")
    if name == "easy-vqa":
        return {"format": "easy-vqa", "split": rest or "test"}
    if name in KEYED_FORMATS:
        spec: dict[str, Any] = {"format": name}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            spec[key] = value
        return spec
    raise ValueError(f"unknown data spec '{text}': use easy-vqa:SPLIT, a .jsonl manifest, "
                     "vqav2:questions=...,annotations=...,images=... or gqa:questions=...,images=...")


def reader(fmt: str | None) -> Callable[..., list[Example]]:
    """The read function of a data format (imported on demand: readers import this module)."""
    if fmt not in READERS:
        raise ValueError(f"unknown data format '{fmt}'; available: {', '.join(sorted(READERS))}")
    return importlib.import_module(f"{__package__}.{READERS[fmt]}").read


def read_dataset(spec: dict[str, Any]) -> list[Example]:
    """Examples for a data spec; ``limit`` takes a fixed seeded sample, so reruns see the same set."""
    options = dict(spec)
    read = reader(options.pop("format", None))
    limit, seed = options.pop("limit", None), options.pop("seed", 0)
    examples = read(**options)
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return examples
