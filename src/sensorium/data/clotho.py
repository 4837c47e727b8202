"""Clotho: audio captioning, a CSV (``file_name, caption_1 .. caption_5``) beside a folder of the clips."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from .audiocaps import read_csv
from .examples import Example, none_found

CAPTION_COLUMNS = tuple(f"caption_{number}" for number in range(1, 6))


def read(csv: str, audio: str) -> list[Example]:
    """One example per clip with its five captions; the file name is the clip's id.

    A clip missing from the folder keeps its path, so training reports it (or skips it with ``--skip-bad``);
    a folder holding none of the clips is an error here.
    """
    folder = Path(audio)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: audio folder not found")
    examples = []
    for row in read_csv(csv, ("file_name", *CAPTION_COLUMNS)):
        name = row["file_name"].strip()
        captions = [row[column].strip() for column in CAPTION_COLUMNS if (row[column] or "").strip()]
        examples.append(Example(media=str(folder / name), question="", answers=captions, answer_type="caption",
                                question_id=name))
    if examples and not any(Path(example.media).is_file() for example in examples):
        raise none_found(audio, f"the {len(examples)} clips of {csv}", examples[0].question_id)
    return examples
