"""The example type every reader produces, and the dispatch on a data spec."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..benchmarks import GENERATORS, generator
from ..errors import BadInputError

# Data format -> "module[:function]" of sensorium.data whose function (``read`` by default) returns the examples.
READERS = {"easy-vqa": "easyvqa", "jsonl": "jsonl", "vqav2": "vqav2", "gqa": "gqa", "coco": "coco",
           "karpathy": "karpathy", "msrvtt-qa": "msrvtt:read_qa", "msrvtt-caption": "msrvtt:read_captions",
           "audiocaps": "audiocaps", "clotho": "clotho", "asterisk": "asterisk:read_qa",
           "asterisk-caption": "asterisk:read_captions"}
# Formats written on the command line as NAME:key=value,key=value, the keys being the reader's arguments.
KEYED_FORMATS = ("vqav2", "gqa", "coco", "karpathy", "msrvtt-qa", "msrvtt-caption", "audiocaps", "clotho")
# Formats written as NAME:SPLIT, and the split read when none is written.
DEFAULT_SPLITS = {"easy-vqa": "test", "asterisk": "all", "asterisk-caption": "all"}


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
        return json.loads(file.read_bytes())
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


def parse_data_spec(text: str) -> dict[str, Any]:
    """Command-line form of a data spec.

    ``easy-vqa:test``, ``path/to/manifest.jsonl``, ``vqav2:questions=Q.json,annotations=A.json,images=DIR``,
    ``gqa:questions=Q.json,images=DIR``, ``coco:annotations=captions.json,images=DIR``,
    ``karpathy:path=dataset_coco.json,images=DIR,split=test``, ``msrvtt-qa:questions=Q.json,videos=DIR``
    (MSVD-QA too), ``msrvtt-caption:path=videodatainfo.json,videos=DIR,split=test``,
    ``audiocaps:csv=test.csv,audio=DIR``, ``clotho:csv=captions.csv,audio=DIR``, ``asterisk:SPLIT`` /
    ``asterisk-caption:SPLIT`` (Debian's Asterisk prompts), or ``scenes:DIR/SPLIT`` / ``videos:DIR/SPLIT`` /
    ``audio:DIR/SPLIT`` for the VQA side of a split written by ``sensorium data make-scenes`` / ``make-videos``
    / ``make-audio``.
    """
    if text.endswith(".jsonl"):
        return {"format": "jsonl", "path": text}
    name, _, rest = text.partition(":")
    if name in DEFAULT_SPLITS:
        return {"format": name, "split": rest or DEFAULT_SPLITS[name]}
    if name in KEYED_FORMATS:
        spec: dict[str, Any] = {"format": name}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            spec[key] = value
        return spec
    if name in GENERATORS:
        return _generated_spec(text, name, rest)
    raise ValueError(f"unknown data spec '{text}': use easy-vqa:SPLIT, a .jsonl manifest, vqav2:questions=..., "
                     "gqa:questions=..., coco:annotations=..., karpathy:path=..., msrvtt-qa:questions=..., "
                     "msrvtt-caption:path=..., audiocaps:csv=..., clotho:csv=..., asterisk:SPLIT, "
                     "asterisk-caption:SPLIT, scenes:DIR/SPLIT, videos:DIR/SPLIT or audio:DIR/SPLIT")


def _generated_spec(text: str, name: str, rest: str) -> dict[str, Any]:
    """The VQA v2 files ``sensorium data make-NAME`` writes for one split, and the folder and names of its media."""
    benchmark = generator(name).BENCHMARK
    folder, _, split = rest.rpartition("/")
    if split not in benchmark.splits:
        raise ValueError(f"data spec '{text}': expected {name}:DIR/SPLIT with SPLIT one of "
                         f"{', '.join(benchmark.splits)}")
    root = Path(folder or ".")
    return {"format": "vqav2", "questions": str(root / f"questions_{split}.json"),
            "annotations": str(root / f"annotations_{split}.json"), "images": str(root / benchmark.media),
            "file_pattern": benchmark.file_pattern}


def reader(fmt: str | None) -> Callable[..., list[Example]]:
    """The read function of a data format (imported on demand: readers import this module)."""
    if fmt not in READERS:
        raise ValueError(f"unknown data format '{fmt}'; available: {', '.join(sorted(READERS))}")
    module, _, function = READERS[fmt].partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function or "read")


def read_dataset(spec: dict[str, Any]) -> list[Example]:
    """Examples for a data spec; ``limit`` takes a fixed seeded sample, so reruns see the same set."""
    options = dict(spec)
    fmt = options.pop("format", None)
    read = reader(fmt)
    limit, seed = options.pop("limit", None), options.pop("seed", 0)
    try:
        inspect.signature(read).bind(**options)
    except TypeError as error:
        raise ValueError(f"data format '{fmt}': {error}") from error
    examples = read(**options)
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return examples


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
