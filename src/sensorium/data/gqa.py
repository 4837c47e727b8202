"""GQA in its official layout: a questions JSON keyed by question id + the folder of its images."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from .examples import Example, load_json, text


def _load_questions(path: str) -> dict[str, dict]:
    file = Path(path)
    data = load_json(file)
    if not isinstance(data, dict):
        raise BadInputError(f"{file}: expected an object mapping question ids to questions")
    return data


def read(questions: str, images: str) -> list[Example]:
    """One example per question; ``answer_type`` is GQA's structural type (verify, query, choose, ...).

    The test and challenge files carry no answers: their examples have an empty answer list.
    """
    folder = Path(images)
    examples = []
    for question_id, entry in _load_questions(questions).items():
        try:
            answer, where = entry.get("answer"), f"{questions}: question '{question_id}'"
            examples.append(Example(
                media=str(folder / f"{text(entry['imageId'], 'imageId', where)}.jpg"),
                question=text(entry["question"], "question", where),
                answers=[text(answer, "answer", where)] if answer is not None else [],
                answer_type=(entry.get("types") or {}).get("structural", "other"), question_id=str(question_id),
            ))
        except (AttributeError, KeyError, TypeError) as error:
            raise BadInputError(f"{questions}: malformed question '{question_id}' ({error!r})") from error
    return examples
