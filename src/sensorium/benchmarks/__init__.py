"""Procedural benchmarks: media generated from seeded plans, with captions and questions true by construction.

Each generator writes its splits in the formats users already have (COCO captions, VQA v2 questions and
annotations), so the standard readers of sensorium.data read them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# NAME of ``sensorium data make-NAME`` and of the data spec NAME:DIR/SPLIT -> the module of this package with
# its BENCHMARK and make_NAME function.
GENERATORS = {"scenes": "scenes", "videos": "videos", "audio": "sounds", "audiovisual": "audiovisual"}
# NAME -> the question types whose questions a split also writes apart (questions_SPLIT_TYPE.json and
# annotations_SPLIT_TYPE.json), read by the data spec NAME:DIR/SPLIT/TYPE: one sense's questions to train on.
SUBSETS = {"audiovisual": ("picture", "sound", "both")}


def generator(name: str) -> ModuleType:
    """The module making a generated benchmark, imported on demand: each needs its own media libraries."""
    return importlib.import_module(f"{__name__}.{GENERATORS[name]}")
