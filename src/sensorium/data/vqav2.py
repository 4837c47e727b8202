"""VQA v2 in its official layout: questions JSON + annotations JSON + a COCO image folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from .examples import Example, load_json, text


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


def _question_id(entry: object, path: str, what: str) -> int | str:
    """The id joining a question to its annotation: an object's integer or string 'question_id'."""
    if not isinstance(entry, dict) or "question_id" not in entry:
        raise BadInputError(f"{path}: each {what} must be an object with a 'question_id', not {entry!r:.80}")
    question_id = entry["question_id"]
    if isinstance(question_id, bool) or not isinstance(question_id, (int, str)):
        raise BadInputError(f"{path}: {what} 'question_id' must be an integer or a string, not {question_id!r:.60}")
    return question_id


def _annotations_by_id(annotations: str) -> dict[int | str, tuple[list[str], str]]:
    """Each question's human answers and answer type; every problem names the annotations file."""
    entries, _ = _load_with_list(annotations, "annotations")
    by_id = {}
    for entry in entries:
        question_id = _question_id(entry, annotations, "annotation")
        where = f"{annotations}: annotation of question {question_id!r}"
        answers = entry.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, dict) and "answer" in a for a in answers):
            raise BadInputError(f"{where}: 'answers' must be a list of objects with an 'answer'")
        by_id[question_id] = ([text(a["answer"], "answer", where) for a in answers],
                              text(entry.get("answer_type", "other"), "answer_type", where))
    return by_id


def read(questions: str, images: str, annotations: str | None = None,
         file_pattern: str = COCO_PATTERN) -> list[Example]:
    """Questions with their ten answers; ``file_pattern`` names media that are not COCO images (videos)."""
    question_list, question_file = _load_with_list(questions, "questions")
    subtype = text(question_file.get("data_subtype", ""), "data_subtype", questions)
    answers_by_id = _annotations_by_id(annotations) if annotations else {}
    examples = []
    for q in question_list:
        question_id = _question_id(q, questions, "question")
        where = f"{questions}: question {question_id!r}"
        try:
            image_id = int(q["image_id"])
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise BadInputError(f"{where}: needs an integer 'image_id' ({error!r:.80})") from error
        answers, answer_type = answers_by_id.get(question_id, ([], "other"))
        examples.append(Example(
            media=str(image_path(Path(images), subtype, image_id, file_pattern)),
            question=text(q.get("question"), "question", where), answers=answers, answer_type=answer_type,
            question_id=str(question_id),
        ))
    if annotations:
        missing = [e.question_id for e in examples if not e.answers]
        if missing:
            raise BadInputError(f"{annotations}: no answers for question id(s) {', '.join(missing[:5])}")
    return examples
