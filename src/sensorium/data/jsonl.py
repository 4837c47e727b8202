"""The plain manifest: one JSON object per line, media paths relative to the manifest's folder.

A line is a question (``media``, ``question``, ``answers`` or ``answer``) or, without a question, an
image to caption (``media``, ``captions``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInputError
from .examples import Example


def _strings(values: object, key: str, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise BadInputError(f"{where}: '{key}' must be a list of strings")
    return values


def _example(record: dict, manifest: Path, number: int, where: str) -> Example:
    media, question_id = str(manifest.parent / record["media"]), str(record.get("id", number))
    if "captions" in record:
        return Example(media=media, question="", answers=_strings(record["captions"], "captions", where),
                       answer_type="caption", question_id=question_id)
    answers = record.get("answers", [record["answer"]] if "answer" in record else [])
    return Example(
        media=media, question=str(record["question"]), answers=_strings(answers, "answers", where),
        answer_type=str(record.get("answer_type", "other")), question_id=question_id,
    )


def read(path: str) -> list[Example]:
    manifest = Path(path)
    if not manifest.is_file():
        raise BadInputError(f"{manifest}: manifest not found")
    examples = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadInputError(f"{where}: malformed JSON ({error.msg})") from error
        if not isinstance(record, dict) or "media" not in record or ("question" in record) == ("captions" in record):
            raise BadInputError(f"{where}: each line needs 'media' and 'question' (or 'captions', not both)")
        examples.append(_example(record, manifest, number, where))
    return examples
