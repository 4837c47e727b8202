"""COCO captions in the official layout: a captions JSON (``images`` + ``annotations``) and an image folder.

One example per image, with all its reference captions as answers. A file without an ``annotations`` list
(the test split's image info) gives every image with no answers, so captions can still be generated and
submitted. When annotations are present, an image none of them mentions is left out: it can neither be
trained on nor scored.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from .examples import Example, load_json


def _load(path: str) -> dict:
    file = Path(path)
    data = load_json(file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BadInputError(f"{file}: expected an object with an 'images' list")
    if not isinstance(data.get("annotations", []), list):
        raise BadInputError(f"{file}: 'annotations' must be a list")
    return data


def _captions_by_image(annotations: str, entries: list, known: set[int]) -> dict[int, list[str]]:
    """Each image's captions in file order; a caption of an image the file does not list is an error."""
    captions: dict[int, list[str]] = {}
    for entry in entries:
        try:
            image_id, caption = int(entry["image_id"]), entry["caption"]
        except (KeyError, TypeError, ValueError) as error:
            raise BadInputError(f"{annotations}: malformed annotation {entry!r:.80} ({error!r})") from error
        if not isinstance(caption, str):
            raise BadInputError(f"{annotations}: caption of image {image_id} is not a string")
        if image_id not in known:
            raise BadInputError(f"{annotations}: caption for image id {image_id}, which 'images' does not list")
        captions.setdefault(image_id, []).append(caption.strip())
    return captions


def read(annotations: str, images: str) -> list[Example]:
    data = _load(annotations)
    try:
        files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
    except (KeyError, TypeError, ValueError) as error:
        raise BadInputError(f"{annotations}: each image needs 'id' and 'file_name' ({error!r})") from error
    captions = _captions_by_image(annotations, data.get("annotations", []), set(files))
    captioned = "annotations" in data
    return [
        Example(media=str(Path(images) / file_name), question="", answers=captions.get(image_id, []),
                answer_type="caption", question_id=str(image_id))
        for image_id, file_name in files.items()
        if image_id in captions or not captioned
    ]
