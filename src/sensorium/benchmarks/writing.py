"""The files of a procedural benchmark (shapes scenes, moving shapes, sound scenes).

The generators differ only in their media; each split is written in the formats users already have:
COCO captions JSON, VQA v2 questions + annotations JSON (the question type is the annotation's
``answer_type``), and a plan file keeping what every medium was generated from; ``meta.json`` sums them up.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.vqav2 import image_path

ANSWERS_PER_QUESTION = 10  # VQA v2 has ten human answers per question; here all ten are the one true answer


@dataclass(frozen=True)
class Benchmark:
    """What a generator writes where, and what its files say about it."""

    description: str  # every file's info reads "{description}, {split} split"
    version: int
    splits: tuple[str, ...]
    media: str  # the folder of the media files, named by ``file_pattern`` (a ``vqav2.image_path`` pattern)
    file_pattern: str
    data_type: str  # of the VQA files; a split's data_subtype is "{data_type}-{split}"
    plans: str  # the plan file "{plans}_{split}.json" lists the plans under this key
    question_types: tuple[str, ...]  # counted in the summary, in this order
    unit: str  # what one medium is called in counts and messages: "image", "clip"
    making: str  # what the progress bar says is being done to the media: "drawing", "rendering"
    subsets: tuple[str, ...] = ()  # question types also written apart: questions_{split}_{type}.json, annotations_…

    def subset_files(self, split: str, subset: str | None = None) -> tuple[str, str]:
        """The names of a split's questions and annotations files: all its questions, or one type's (``subset``)."""
        tail = f"{split}_{subset}" if subset else split
        return f"questions_{tail}.json", f"annotations_{tail}.json"

    @property
    def generator(self) -> str:
        """What meta.json names as the set's generator: how readers recognise a set this code made."""
        return f"sensorium {self.description}"

    def subtype(self, split: str) -> str:
        """The split's VQA ``data_subtype``, which also names its media files."""
        return f"{self.data_type}-{split}"

    def media_path(self, out: Path, split: str, media_id: int) -> Path:
        """Where a medium is written, so that the VQA v2 reader finds it from the questions file."""
        return image_path(out / self.media, self.subtype(split), media_id, self.file_pattern)


@dataclass(frozen=True)
class Item:
    """One generated medium and the references written from its plan."""

    media: dict[str, Any]  # its entry in the captions file's "images": "id", "file_name", size or length
    plan: dict[str, Any]  # its entry in the plan file
    captions: list[str]
    questions: list[tuple[str, str, str]]  # (type, question, answer)


# Makes, writes and describes medium ``index`` of a split: make_item(out, split, index, seed=seed).
MakeItem = Callable[..., Item]


def write_benchmark(out: Path, benchmark: Benchmark, make_item: MakeItem, n_train: int, n_test: int, seed: int,
                    details: dict[str, Any], workers: int = 1) -> dict[str, Any]:
    """Write every split under ``out`` and return the summary also written to ``out/meta.json``.

    ``train`` gets ``n_train`` media and every other split ``n_test``. Every medium has its own random stream
    seeded from (seed, split, index) by ``make_item``, so a split does not change when another split's size
    does, and the same seed gives byte-identical files however many ``workers`` make media at once (threads:
    the work happens in native code or in other processes). ``details`` describe the generator in the
    summary, after its name, version and seed.
    """
    _check_counts(f"{benchmark.unit}s", n_train, n_test)
    out = Path(out)
    (out / benchmark.media).mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"generator": benchmark.generator, "version": benchmark.version,
                            "seed": seed, **details, "splits": {}}
    for split in benchmark.splits:
        count = n_train if split == "train" else n_test
        made = _in_order(partial(make_item, out, split, seed=seed), count, workers)
        items = tqdm(made, total=count, desc=f"{benchmark.making} {split}", unit=benchmark.unit)
        meta["splits"][split] = {f"{benchmark.unit}s": count, **write_split(out, benchmark, split, seed, items)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # beside the splits, for people to read
    return meta


def _check_counts(unit: str, n_train: int, n_test: int) -> None:
    """Every split needs at least one medium: an empty one could be neither trained on nor scored."""
    for what, count in (("train", n_train), ("test", n_test)):
        if count < 1:
            raise ValueError(f"the number of {what} {unit} must be at least 1, got {count}")


def _in_order(make: Callable[[int], Item], count: int, workers: int) -> Iterator[Item]:
    """The items of indices 0 to count - 1, in this order, made by ``workers`` threads at once.

    A failure surfaces when its item is reached, and the media not yet started are then never made.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(make, range(count))


def write_split(out: Path, benchmark: Benchmark, split: str, seed: int, items: Iterable[Item]) -> dict[str, Any]:
    """Write the split's captions, questions, annotations and plan files; the numbers of captions and questions.

    A benchmark with ``subsets`` also writes the questions and annotations of each of those question types apart.

    The k-th caption of medium ``id`` has id ``id * 10 + k``, its k-th question ``id * 1000 + k``.
    """
    subtype = benchmark.subtype(split)
    media, plans, caption_rows, question_rows, answer_rows = [], [], [], [], []
    for item in items:
        media_id = item.media["id"]
        media.append(item.media)
        plans.append(item.plan)
        caption_rows += [{"id": media_id * 10 + k, "image_id": media_id, "caption": text}
                         for k, text in enumerate(item.captions)]
        for k, (kind, question, answer) in enumerate(item.questions):
            question_id = media_id * 1000 + k
            question_rows.append({"image_id": media_id, "question": question, "question_id": question_id})
            answer_rows.append({
                "question_id": question_id, "image_id": media_id, "question_type": kind, "answer_type": kind,
                "multiple_choice_answer": answer,
                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                            for i in range(ANSWERS_PER_QUESTION)],
            })
    info = {"description": f"{benchmark.description}, {split} split", "version": str(benchmark.version),
            "contributor": "sensorium", "seed": seed}
    _write_json(out / f"captions_{split}.json", {"info": info, "images": media, "annotations": caption_rows})
    for subset in (None, *benchmark.subsets):
        chosen = {row["question_id"] for row in answer_rows if subset in (None, row["answer_type"])}
        questions_file, annotations_file = benchmark.subset_files(split, subset)
        _write_json(out / questions_file, {"info": info, "task_type": "Open-Ended", "data_type": benchmark.data_type,
                                           "data_subtype": subtype,
                                           "questions": [r for r in question_rows if r["question_id"] in chosen]})
        _write_json(out / annotations_file, {"info": info, "data_type": benchmark.data_type, "data_subtype": subtype,
                                             "annotations": [r for r in answer_rows if r["question_id"] in chosen]})
    _write_json(out / f"{benchmark.plans}_{split}.json", {"info": info, benchmark.plans: plans})
    types = Counter(row["answer_type"] for row in answer_rows)
    return {"captions": len(caption_rows), "questions": len(question_rows),
            "question_types": {kind: types[kind] for kind in benchmark.question_types}}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Compact, as the official COCO and VQA v2 files are."""
    path.write_text(json.dumps(data, separators=(",", ":")))
