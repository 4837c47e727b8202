"""Fashion-MNIST as a Hugging Face dataset: 70,000 real product photos (28x28 grey, 10 classes) from Debian's
``dataset-fashion-mnist`` package, with questions true by each photo's label, and captions.

The package ships the original IDX files; ``sensorium data make-fashion`` turns them into parquet with an Image
column, read back by the ``hf:`` spec like any published set: ``DIR/vqa`` (one row per question) and
``DIR/captions`` (one row per photo), each with the official ``train`` and ``test`` splits. A question is asked
only where the label decides its answer: a dress may or may not have sleeves, so nobody asks.
"""

from __future__ import annotations

import gzip
import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadInputError

SOURCE = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package installs the files
SPLITS = {"train": "train", "test": "t10k"}  # our split: the file prefix of the release
SIDE = 28
MAX_ITEMS = 100_000  # per file; the release has 60,000 and 10,000
MAX_FILE_BYTES = 64 * 2**20  # a compressed IDX file; the largest of the release is 26 MB
BATCH = 1_000  # photos written at a time

# The release's classes in label order: (the answer to "what is this item?", the caption's words).
CLASSES = [("t-shirt", "a t-shirt"), ("trousers", "a pair of trousers"), ("pullover", "a pullover"),
           ("dress", "a dress"), ("coat", "a coat"), ("sandal", "a sandal"), ("shirt", "a shirt"),
           ("sneaker", "a sneaker"), ("bag", "a bag"), ("ankle boot", "an ankle boot")]
FEET, SLEEVES, NO_SLEEVES = {5, 7, 9}, {0, 2, 4, 6}, {1, 5, 7, 8, 9}
# (question, answer type, the answer for a label, or None where the label does not decide it)
QUESTIONS = [
    ("what is this item?", "item", lambda label: CLASSES[label][0]),
    ("is it worn on the feet?", "yes/no", lambda label: "yes" if label in FEET else "no"),
    ("is it a bag?", "yes/no", lambda label: "yes" if label == 8 else "no"),
    ("does it have sleeves?", "yes/no",
     lambda label: "yes" if label in SLEEVES else "no" if label in NO_SLEEVES else None),
]


def make_fashion(out: Path, source: Path = SOURCE, limits: dict[str, int | None] | None = None) -> dict[str, Any]:
    """Write ``out/vqa`` and ``out/captions`` (a parquet file per split); ``limits``: the first N photos of a
    split (all by default). Returns the counts per split."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = datasets.Image()
    # The label, and the photo's content as the text oracle states it.
    labelled = {"label": datasets.ClassLabel(names=[name for name, _ in CLASSES]), "truth": datasets.Value("string")}
    schemas = {"vqa": datasets.Features({"image": image, "question": datasets.Value("string"),
                                         "answers": datasets.Sequence(datasets.Value("string")),
                                         "answer_type": datasets.Value("string"),
                                         "question_id": datasets.Value("string"), **labelled}),
               "captions": datasets.Features({"image": image, "captions": datasets.Sequence(datasets.Value("string")),
                                              **labelled})}
    summary = {}
    for split, prefix in SPLITS.items():
        photos = read_idx(source / f"{prefix}-images-idx3-ubyte.gz", (SIDE, SIDE))
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz", ())
        if len(photos) != len(labels) or labels.max(initial=0) >= len(CLASSES):
            raise BadInputError(f"{source}: {split}: {len(photos):,} photos but {len(labels):,} labels, or a label "
                                f"past {len(CLASSES) - 1}")
        count = min(len(photos), (limits or {}).get(split) or len(photos))
        writers = {kind: pq.ParquetWriter(_target(out / kind / f"{split}.parquet"), features.arrow_schema)
                   for kind, features in schemas.items()}
        questions = 0
        with writers["vqa"], writers["captions"]:
            for rows in _batches(photos[:count], labels[:count], split):
                for kind, writer in writers.items():
                    writer.write_table(pa.Table.from_pylist(rows[kind], schema=schemas[kind].arrow_schema))
                questions += len(rows["vqa"])
        summary[split] = {"photos": count, "questions": questions, "captions": count}
    return summary


def _target(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _batches(photos: np.ndarray, labels: np.ndarray, split: str) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """The rows of BATCH photos at a time: their questions, and one caption row each."""
    for start in range(0, len(photos), BATCH):
        rows: dict[str, list[dict[str, Any]]] = {"vqa": [], "captions": []}
        for index in range(start, min(start + BATCH, len(photos))):
            label, name = int(labels[index]), f"{split}-{index:05d}.png"
            medium = {"bytes": png(photos[index]), "path": name}
            for number, (question, answer_type, answer) in enumerate(QUESTIONS):
                truth = answer(label)
                if truth is not None:
                    rows["vqa"].append({"image": medium, "question": question, "answers": [truth],
                                        "answer_type": answer_type, "question_id": f"{split}-{index:05d}-{number}",
                                        "label": label, "truth": CLASSES[label][1]})
            rows["captions"].append({"image": medium, "captions": [f"a grey photo of {CLASSES[label][1]}"],
                                     "label": label, "truth": CLASSES[label][1]})
        yield rows


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The items of a gzip IDX file of unsigned bytes, each of ``shape``: the header is checked before the items
    are decompressed, and exactly as many bytes as it declares are read."""
    if not path.is_file():
        raise BadInputError(f"{path}: not found (install Debian's dataset-fashion-mnist, or give --source)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise BadInputError(f"{path}: {path.stat().st_size:,} bytes; a Fashion-MNIST file has at most "
                            f"{MAX_FILE_BYTES:,}")
    with gzip.open(path, "rb") as stream:
        try:
            zero, kind, dims = struct.unpack(">HBB", stream.read(4))
            sizes = struct.unpack(f">{dims}I", stream.read(4 * dims))
        except (struct.error, OSError, EOFError) as error:
            raise BadInputError(f"{path}: not a gzip IDX file ({error})") from error
        if zero != 0 or kind != 0x08 or tuple(sizes[1:]) != shape or sizes[0] > MAX_ITEMS:
            raise BadInputError(f"{path}: an IDX header of type {kind:#x} and sizes {sizes}; expected unsigned "
                                f"bytes, at most {MAX_ITEMS:,} items of {shape or 'one value'}")
        size = sizes[0] * int(np.prod(shape, dtype=np.int64))
        try:
            data = stream.read(size)
        except (OSError, EOFError) as error:
            raise BadInputError(f"{path}: unreadable ({error})") from error
    if len(data) != size:
        raise BadInputError(f"{path}: {len(data):,} bytes of items; its header declares {size:,}")
    return np.frombuffer(data, dtype=np.uint8).reshape(sizes[0], *shape)
