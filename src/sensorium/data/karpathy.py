"""Karpathy's COCO split (``dataset_coco.json``): the train/val/test split caption papers report on.

``train`` also includes ``restval``, the 30k validation images the split moves to training; this is
how the split is used in practice (113k training images). Any other split is read as named.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from .examples import Example, load_json

# Splits whose images a requested split also takes.
_INCLUDED = {"train": {"train", "restval"}}


def _load_images(path: str) -> list:
    file = Path(path)
    data = load_json(file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BadInputError(f"{file}: expected an object with an 'images' list")
    return data["images"]


def _example(image: dict, images: Path) -> Example:
    """One image and its raw captions; ``cocoid`` identifies it for COCO tools, ``imgid`` when absent."""
    image_id = image.get("cocoid", image.get("imgid"))
    if image_id is None:
        raise KeyError("'cocoid' or 'imgid'")
    return Example(
        media=str(images / image.get("filepath", "") / image["filename"]), question="",
        answers=[str(sentence["raw"]).strip() for sentence in image["sentences"]],
        answer_type="caption", question_id=str(image_id),
    )


def read(path: str, images: str, split: str) -> list[Example]:
    entries = _load_images(path)
    wanted = _INCLUDED.get(split, {split})
    examples = []
    for image in entries:
        try:
            if image["split"] in wanted:
                examples.append(_example(image, Path(images)))
        except (KeyError, TypeError, ValueError) as error:
            raise BadInputError(f"{path}: malformed image entry {image!r:.80} ({error!r})") from error
    if not examples:
        present = sorted({str(image.get("split")) for image in entries})
        raise BadInputError(f"{path}: no images in split '{split}' (the file has: {', '.join(present) or 'none'})")
    return examples
