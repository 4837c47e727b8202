"""The plain manifest: one JSON object per line, media paths relative to the manifest's folder.

A line is a question (``media``, ``question``, ``answers`` or ``answer``) or, without a question, an
image to caption (``media``, ``captions``); ``truth``, where given, states the medium's content as text for the
text oracle (see ``oracle``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..files import MAX_DATA_BYTES, regular_file
from .examples import Example, text


def _strings(values: object, key: str, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise BadInputError(f"{where}: '{key}' must be a list of strings")
    return values


def _example(record: dict, manifest: Path, number: int, where: str) -> Example:
    media, question_id = str(manifest.parent / text(record["media"], "media", where)), str(record.get("id", number))
    extra = {"truth": text(record["truth"], "truth", where)} if "truth" in record else {}
    if "captions" in record:
        return Example(media=media, question="", answers=_strings(record["captions"], "captions", where),
                       answer_type="caption", question_id=question_id, extra=extra)
    answers = record.get("answers", [text(record["answer"], "answer", where)] if "answer" in record else [])
    return Example(
        media=media, question=text(record["question"], "question", where), answers=_strings(answers, "answers", where),
        answer_type=str(record.get("answer_type", "other")), question_id=question_id, extra=extra,
    )


def _record(line: bytes, where: str) -> dict | None:
    """One line's object; None for a blank line."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInputError(f"{where}: not UTF-8 text ({error.reason} at column {error.start + 1})") from error
    if not decoded.strip():
        return None
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as error:
        raise BadInputError(f"{where}: malformed JSON ({error.msg})") from error
    except RecursionError as error:
        raise BadInputError(f"{where}: malformed JSON (nested too deeply)") from error
    if not isinstance(record, dict) or "media" not in record or ("question" in record) == ("captions" in record):
        raise BadInputError(f"{where}: each line needs 'media' and 'question' (or 'captions', not both)")
    return record


def read(path: str) -> list[Example]:
    manifest = Path(path)
    if not manifest.exists():
        raise BadInputError(f"{manifest}: manifest not found")
    regular_file(manifest, MAX_DATA_BYTES)
    examples = []
    for number, line in enumerate(manifest.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        where = f"{manifest}:{number}"
        record = _record(line, where)
        if record is not None:
            examples.append(_example(record, manifest, number, where))
    if not examples:
        raise BadInputError(f"{manifest}: no records (an empty manifest)")
    return examples


def write_manifest(examples: list[Example], path: Path) -> dict[str, Any]:
    """Write the examples as a manifest (absolute media paths); returns its data spec."""
    lines = []
    for example in examples:
        record = {"media": str(Path(example.media).resolve()), "id": example.question_id}
        if example.answer_type == "caption":
            record["captions"] = example.answers
        else:
            record.update(question=example.question, answers=example.answers, answer_type=example.answer_type)
        if "truth" in example.extra:
            record["truth"] = example.extra["truth"]
        lines.append(json.dumps(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return {"format": "jsonl", "path": str(path)}
