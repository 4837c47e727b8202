"""The example type every reader produces, and what readers share to build it from a user's files."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..files import MAX_DATA_BYTES, regular_file


@dataclass
class Example:
    """One training/evaluation item of any task: a question (empty for captioning) and its references."""

    media: str  # path of the image (or other media) file
    question: str
    answers: list[str]  # one reference (easy-vqa, GQA), ten human answers (VQA v2), or all captions
    answer_type: str = "other"  # the group a report scores separately (question type for VQA)
    question_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def load_json(path: str | Path) -> Any:
    """The content of a user's JSON file, or a BadInputError naming the file; readers check its shape."""
    file = Path(path)
    try:
        return json.loads(regular_file(file, MAX_DATA_BYTES).read_bytes())
    except FileNotFoundError as error:
        raise BadInputError(f"{file}: file not found") from error
    except json.JSONDecodeError as error:
        raise BadInputError(f"{file}: malformed JSON ({error.msg} at line {error.lineno})") from error
    except UnicodeDecodeError as error:
        raise BadInputError(f"{file}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except RecursionError as error:
        raise BadInputError(f"{file}: malformed JSON (nested too deeply)") from error


def text(value: Any, field: str, where: str) -> str:
    """A field that must hold text (a question, an answer, a file name), or a BadInputError naming it.

    Never str(value): a null question would be asked as "None".
    """
    if not isinstance(value, str):
        raise BadInputError(f"{where}: '{field}' must be a string, not {value!r:.60}")
    return value


class MediaFolder:
    """Finds a media file by any of several names (without extension) in one folder, listed once.

    Data sets name a file by an id and leave the extension open (``video7010.mp4``, ``Y<id>.wav``); a
    folder may hold thousands of files, so it is listed once rather than probed per example.
    """

    def __init__(self, folder: str, extensions: tuple[str, ...], kind: str, fallback_extension: str) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise BadInputError(f"{self.folder}: {kind} folder not found")
        self.extensions, self.fallback_extension = extensions, fallback_extension
        self.by_stem: dict[str, str] = {}
        for name in sorted(os.listdir(self.folder)):
            stem, extension = os.path.splitext(name)
            if extension.lower() in extensions:
                self.by_stem.setdefault(stem, name)

    def find(self, stems: list[str]) -> tuple[Path, bool]:
        """(the first stem's file, whether it exists); a missing file gets its most likely path, to be reported."""
        for stem in stems:
            if stem in self.by_stem:
                return self.folder / self.by_stem[stem], True
        return self.folder / f"{stems[0]}{self.fallback_extension}", False


def none_found(folder: str | Path, what: str, example: str, hint: str = "") -> BadInputError:
    """The error of a media folder holding none of the files a data set names. The example name is quoted as
    Python writes it, so a name with a line break or a control character keeps the error on one line."""
    return BadInputError(f"{folder}: none of {what} is in this folder (e.g. {example!r}{hint})")


def split_validation(examples: list[Example], size: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(training, validation): whole media files move to validation, in a seeded order, until it holds ``size``.

    Whole files, so that no image of the held-out split was seen in training under another question.
    """
    media = sorted({e.media for e in examples})
    random.Random(seed).shuffle(media)
    per_media: dict[str, int] = {}
    for example in examples:
        per_media[example.media] = per_media.get(example.media, 0) + 1
    held, count = set(), 0
    for name in media:
        if count >= size:
            break
        held.add(name)
        count += per_media[name]
    if len(held) == len(media):
        raise ValueError(f"validation: {size} examples would leave no training data ({len(examples)} examples)")
    return [e for e in examples if e.media not in held], [e for e in examples if e.media in held]
