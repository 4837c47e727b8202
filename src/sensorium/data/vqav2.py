"""VQA v2 in its official layout: questions JSON + annotations JSON + a COCO image folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from .examples import Example, load_json


def _load_with_list(path: str, key: str) -> tuple[list[dict], dict]:
    file = Path(path)
    data = load_json(file)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise BadInputError(f"{file}: expected an object with a '{key}' list")
    return data[key], data


# COCO file naming used by VQA v2 (e.g. COCO_val2014_000000393225.jpg).
COCO_PATTERN = "COCO_{subtype}_{image_id:012d}.jpg"


def image_path(folder: Path, subtype: str, image_id: int, pattern: str = COCO_PATTERN) -> Path:
    """The media file of an image id; ``pattern`` names it from the file's ``data_subtype`` and the id."""
    return folder / pattern.format(subtype=subtype, image_id=image_id)


def read(questions: str, images: str, annotations: str | None = None,
         file_pattern: str = COCO_PATTERN) -> list[Example]:
    """Questions with their ten answers; ``file_pattern`` names media that are not COCO images (videos)."""
    question_list, question_file = _load_with_list(questions, "questions")
    subtype = question_file.get("data_subtype", "")
    answers_by_id: dict[int, dict] = {}
    if annotations:
        annotation_list, _ = _load_with_list(annotations, "annotations")
        answers_by_id = {a["question_id"]: a for a in annotation_list}
    examples = []
    for q in question_list:
        try:
            annotation = answers_by_id.get(q["question_id"], {})
            examples.append(Example(
                media=str(image_path(Path(images), subtype, int(q["image_id"]), file_pattern)), question=q["question"],
                answers=[a["answer"] for a in annotation.get("answers", [])],
                answer_type=annotation.get("answer_type", "other"), question_id=str(q["question_id"]),
            ))
        except (KeyError, TypeError, ValueError) as error:
            raise BadInputError(f"{questions}: malformed question entry {q!r:.80} ({error!r})") from error
    if annotations:
        missing = [e.question_id for e in examples if not e.answers]
        if missing:
            raise BadInputError(f"{annotations}: no answers for question id(s) {', '.join(missing[:5])}")
    return examples
