"""The plain manifest: one JSON object per line, media paths relative to the manifest's folder."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInputError
from .examples import Example


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
        if not isinstance(record, dict) or "media" not in record or "question" not in record:
            raise BadInputError(f"{where}: each line needs 'media' and 'question'")
        answers = record.get("answers", [record["answer"]] if "answer" in record else [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise BadInputError(f"{where}: 'answers' must be a list of strings")
        examples.append(Example(
            media=str(manifest.parent / record["media"]), question=str(record["question"]), answers=answers,
            answer_type=str(record.get("answer_type", "other")), question_id=str(record.get("id", number)),
        ))
    return examples
