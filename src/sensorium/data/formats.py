"""The data formats a data spec can name, in one table: the dispatch to their readers, the command-line
form of a spec and its help all read it."""

from __future__ import annotations

import importlib
import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..benchmarks import GENERATORS, SUBSETS, generator
from .examples import Example


@dataclass(frozen=True)
class DataFormat:
    """A format of annotation files: the function that reads it, and how the command line names its files.

    The command line writes a spec as NAME:SPLIT (``split``, the split read when none is written), as
    NAME:key=value,key=value (``keys``, the reader's arguments shown in help), or as the path of a file
    ending in ``suffix``.
    """

    reader: str  # "module[:function]" of sensorium.data; the function (``read`` by default) returns the examples
    split: str | None = None
    keys: tuple[str, ...] = ()
    suffix: str | None = None

    def usage(self, name: str) -> str:
        """The command-line form, as help and errors show it."""
        if self.suffix:
            return f"manifest{self.suffix}"
        if self.keys:
            return f"{name}:" + ",".join(f"{key}=.." for key in self.keys)
        return f"{name}:SPLIT"


FORMATS = {
    "easy-vqa": DataFormat("easyvqa", split="test"),
    "jsonl": DataFormat("jsonl", suffix=".jsonl"),
    "vqav2": DataFormat("vqav2", keys=("questions", "annotations", "images")),
    "gqa": DataFormat("gqa", keys=("questions", "images")),
    "coco": DataFormat("coco", keys=("annotations", "images")),
    "karpathy": DataFormat("karpathy", keys=("path", "images", "split")),
    "msrvtt-qa": DataFormat("msrvtt:read_qa", keys=("questions", "videos")),  # MSVD-QA too
    "msrvtt-caption": DataFormat("msrvtt:read_captions", keys=("path", "videos", "split")),
    "audiocaps": DataFormat("audiocaps", keys=("csv", "audio")),
    "clotho": DataFormat("clotho", keys=("csv", "audio")),
    "asterisk": DataFormat("asterisk:read_qa", split="all"),  # Debian's Asterisk prompts
    "asterisk-caption": DataFormat("asterisk:read_captions", split="all"),
    "hf": DataFormat("hf", keys=("path", "split", "image", "audio", "video", "question", "answers", "captions")),
}


def data_spec_forms() -> list[str]:
    """Every command-line form of a data spec: the formats, then the splits ``sensorium data make-NAME`` writes."""
    return [fmt.usage(name) for name, fmt in FORMATS.items()] + [
        f"{name}:DIR/SPLIT" + (f"[/{'|'.join(SUBSETS[name])}]" if name in SUBSETS else "") for name in GENERATORS]


def parse_data_spec(text: str) -> dict[str, Any]:
    """The data spec written on the command line in one of the ``data_spec_forms()``.

    ``easy-vqa:test``, ``path/to/manifest.jsonl``, ``coco:annotations=captions.json,images=DIR``, or
    ``scenes:DIR/SPLIT`` for the VQA side of a split written by ``sensorium data make-scenes``
    (``audiovisual:DIR/SPLIT/TYPE``: the questions of one type written apart).
    """
    for name, fmt in FORMATS.items():
        if fmt.suffix and text.endswith(fmt.suffix):
            return {"format": name, "path": text}
    name, _, rest = text.partition(":")
    if name in GENERATORS:
        return _generated_spec(text, name, rest)
    fmt = FORMATS.get(name)
    if fmt is None or fmt.suffix:
        forms = data_spec_forms()
        raise ValueError(f"unknown data spec '{text}': use {', '.join(forms[:-1])} or {forms[-1]}")
    if not fmt.keys:
        return {"format": name, "split": rest or fmt.split}
    spec: dict[str, Any] = {"format": name}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        spec[key] = value
    return spec


def _generated_spec(text: str, name: str, rest: str) -> dict[str, Any]:
    """The VQA v2 files ``sensorium data make-NAME`` writes for one split, and the folder and names of its media."""
    benchmark = generator(name).BENCHMARK
    folder, _, split = rest.rpartition("/")
    subset = None
    parent, _, parent_split = folder.rpartition("/")
    if benchmark.subsets and split not in benchmark.splits and parent_split in benchmark.splits:
        if split not in benchmark.subsets:  # NAME:DIR/SPLIT/TYPE: one question type's files
            raise ValueError(f"data spec '{text}': unknown question type '{split}'; expected {name}:DIR/SPLIT/TYPE "
                             f"with TYPE one of {', '.join(benchmark.subsets)}")
        folder, split, subset = parent, parent_split, split
    if split not in benchmark.splits:
        raise ValueError(f"data spec '{text}': expected {name}:DIR/SPLIT with SPLIT one of "
                         f"{', '.join(benchmark.splits)}")
    root = Path(folder or ".")
    questions, annotations = benchmark.subset_files(split, subset)
    return {"format": "vqav2", "questions": str(root / questions), "annotations": str(root / annotations),
            "images": str(root / benchmark.media), "file_pattern": benchmark.file_pattern}


def reader(fmt: str | None) -> Callable[..., list[Example]]:
    """The read function of a data format (imported on demand: readers need their own libraries)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format '{fmt}'; available: {', '.join(sorted(FORMATS))}")
    module, _, function = FORMATS[fmt].reader.partition(":")
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
