"""Hugging Face datasets as data: a ``save_to_disk`` folder, parquet files, or an imagefolder/audiofolder with its
metadata file, read through the ``datasets`` library from the disk alone (never the hub).

VQA v2, COCO, AudioCaps and most sets people share are published this way: parquet whose image or audio column
holds each medium's bytes. Rows are read in small Arrow batches, in the raw form ``datasets`` stores (nothing
decoded), so a large set streams through without being read whole; each medium's size is checked from the Arrow
column before its bytes leave it. A medium the dataset points to on disk (an imagefolder's files) is used where it
lies; embedded bytes are written once under the cache, named by their hash, so the same photo asked about ten
times is one file, and every command (feature cache, held-out splits by medium, media readers with their own
bounds) reads it as any other file.

Columns are found by their common names (``image``, ``audio``, ``video``, ``question``, ``answer``/``answers``,
``caption``/``captions``/``text``) or named in the spec; a question column gives VQA examples, a caption column
without one captioning examples. A ``truth`` column, where there is one, states each medium's content as text for
the text oracle (see ``oracle``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..zoo import cache_dir
from .examples import Example, text

MEDIA = ("image", "audio", "video")
COMMON_NAMES = {"image": ("image", "img", "picture"), "audio": ("audio", "sound"), "video": ("video", "clip"),
                "question": ("question", "query"), "answers": ("answers", "answer", "multiple_choice_answer"),
                "captions": ("captions", "caption", "text", "sentences")}
FOLDER_KINDS = {"imagefolder": (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"),
                "audiofolder": (".wav", ".flac", ".mp3", ".ogg"),
                "videofolder": (".mp4", ".webm", ".mkv", ".avi", ".mov")}
MAX_MEDIUM_BYTES = 2**30  # one image, sound or video; anything larger is not a data set's medium
BATCH_ROWS = 64  # rows read from Arrow at a time
SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


def read(path: str, split: str | None = None, image: str | None = None, audio: str | None = None,
         video: str | None = None, question: str | None = None, answers: str | None = None,
         captions: str | None = None) -> list[Example]:
    dataset = open_split(Path(path), split)
    columns = column_names(dataset)
    named = {"image": image, "audio": audio, "video": video, "question": question, "answers": answers,
             "captions": captions}
    chosen = {role: find_column(role, given, columns, path) for role, given in named.items()}
    medium = media_column(chosen, columns, path)
    if chosen["question"] is None and chosen["captions"] is None:
        raise BadInputError(f"{path}: no question or caption column (columns: {', '.join(columns)}); name one "
                            "with question=COL or captions=COL")
    labels = class_names(dataset, chosen["answers"])
    root, store = Path(path) if Path(path).is_dir() else Path(path).parent, cache_dir() / "hf-media"
    examples = [example(row, number, chosen, medium, labels, (root, store), f"{path}: row {number}")
                for number, row in enumerate(rows(dataset, medium, path))]
    if not examples:
        raise BadInputError(f"{path}: no rows")
    return examples


def open_split(path: Path, split: str | None) -> Any:
    """The split's dataset, memory-mapped (a save_to_disk folder) or streamed (parquet, a media folder)."""
    import datasets

    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        found = datasets.load_from_disk(str(path))
    elif path.is_file() and path.suffix == ".parquet":
        found = datasets.load_dataset("parquet", data_files={split or "train": str(path)}, streaming=True)
    elif path.is_dir():
        found = datasets.load_dataset(folder_builder(path), data_dir=str(path), streaming=True)
    else:
        raise BadInputError(f"{path}: not a dataset (a save_to_disk folder, a .parquet file, or a folder of parquet "
                            "files or of media with a metadata file)")
    if not isinstance(found, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return found
    if split is None and len(found) == 1:
        split = next(iter(found))
    if split not in found:
        raise BadInputError(f"{path}: {'no split ' + repr(split) if split else 'several splits'}; name one with "
                            f"split=NAME (splits: {', '.join(found)})")
    return found[split]


def folder_builder(path: Path) -> str:
    """The ``datasets`` builder of a folder: parquet where it holds parquet files, else its media's folder kind."""
    for file in path.rglob("*"):
        suffix = file.suffix.lower()
        if suffix == ".parquet":
            return "parquet"
        kind = next((kind for kind, suffixes in FOLDER_KINDS.items() if suffix in suffixes), None)
        if kind is not None:
            return kind
    raise BadInputError(f"{path}: a folder with no parquet, image, audio or video files")


def column_names(dataset: Any) -> list[str]:
    return list(dataset.features or {}) or list(dataset.column_names or [])


def find_column(role: str, given: str | None, columns: list[str], path: str) -> str | None:
    """The column named for ``role``, or the first of its common names present (any case)."""
    if given is not None:
        if given not in columns:
            raise BadInputError(f"{path}: no column '{given}' for {role} (columns: {', '.join(columns)})")
        return given
    by_lower = {column.lower(): column for column in columns}
    return next((by_lower[name] for name in COMMON_NAMES[role] if name in by_lower), None)


def media_column(chosen: dict[str, str | None], columns: list[str], path: str) -> str:
    """The one media column (an image, a sound or a video per row)."""
    found = [chosen[role] for role in MEDIA if chosen[role] is not None]
    if len(found) != 1:
        what = "no image, audio or video column" if not found else f"several media columns ({', '.join(found)})"
        raise BadInputError(f"{path}: {what} (columns: {', '.join(columns)}); name one with image=, audio= or "
                            "video=COL")
    return found[0]


def class_names(dataset: Any, column: str | None) -> list[str] | None:
    """The names of a ClassLabel answer column (answers are then stored as class numbers)."""
    feature = (dataset.features or {}).get(column) if column else None
    return list(feature.names) if feature is not None and hasattr(feature, "names") else None


def rows(dataset: Any, medium: str, path: str) -> Iterator[dict[str, Any]]:
    """The rows as ``datasets`` stores them (media undecoded), a batch at a time, each batch's media sizes checked
    in Arrow before any of its bytes are copied out."""
    import pyarrow.compute as pc

    start = 0
    for batch in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
        column = batch.column(medium)
        if hasattr(column.type, "get_field_index") and column.type.get_field_index("bytes") >= 0:
            sizes = pc.binary_length(pc.struct_field(column, "bytes"))
            largest = pc.max(sizes).as_py()
            if largest is not None and largest > MAX_MEDIUM_BYTES:
                row = start + pc.index(sizes, largest).as_py()
                raise BadInputError(f"{path}: row {row}: a medium of {largest:,} bytes in '{medium}'; at most "
                                    f"{MAX_MEDIUM_BYTES:,} are read")
        yield from batch.to_pylist()
        start += batch.num_rows


def example(row: dict[str, Any], number: int, chosen: dict[str, str | None], medium: str,
            labels: list[str] | None, folders: tuple[Path, Path], where: str) -> Example:
    media = media_file(row[medium], medium, *folders, where)
    question_id = str(row.get("question_id", number))
    extra = {"truth": text(row["truth"], "truth", where)} if row.get("truth") is not None else {}
    if chosen["question"] is None:
        return Example(media=media, question="", answers=strings(row[chosen["captions"]], chosen["captions"], where),
                       answer_type="caption", question_id=question_id, extra=extra)
    answers = [] if chosen["answers"] is None else strings(row[chosen["answers"]], chosen["answers"], where, labels)
    return Example(media=media, question=text(row[chosen["question"]], chosen["question"], where), answers=answers,
                   answer_type=str(row.get("answer_type") or "other"), question_id=question_id, extra=extra)


def strings(value: Any, column: str, where: str, labels: list[str] | None = None) -> list[str]:
    """References from a text, a list of texts, VQA v2's list of {"answer": ...} or a class number."""
    if labels is not None and isinstance(value, int) and 0 <= value < len(labels):
        return [labels[value]]
    values = value if isinstance(value, list) else [value]
    found = [item.get("answer", item.get("text")) if isinstance(item, dict) else item for item in values]
    if not all(isinstance(item, str) for item in found):
        raise BadInputError(f"{where}: '{column}' must hold text or a list of texts, not {value!r:.60}")
    return found


def media_file(value: Any, column: str, root: Path, store: Path, where: str) -> str:
    """The path of a row's medium: the file the dataset points to (a text column: relative to ``root``, the
    dataset's folder), or its embedded bytes written once under ``store``, named by their hash (the stored name's
    extension kept: decoders pick a format by it)."""
    if isinstance(value, str):
        value = {"bytes": None, "path": str(root / value)}
    if not isinstance(value, dict) or not {"bytes", "path"} & set(value):
        raise BadInputError(f"{where}: '{column}' holds {type(value).__name__}, not an image, sound or video")
    data, name = value.get("bytes"), value.get("path") or ""
    if data is None:
        if not name or not Path(name).is_file():
            raise BadInputError(f"{where}: '{column}' holds no bytes and names no file here ({name!r:.80})")
        return name
    suffix = SUFFIX.fullmatch(Path(name).suffix)
    digest = hashlib.sha256(data).hexdigest()
    file = store / digest[:2] / (digest + (suffix.group(0).lower() if suffix else ""))
    if not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f"{file.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(file)
    return str(file)
