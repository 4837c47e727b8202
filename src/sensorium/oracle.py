"""The text oracle: what the frozen LM makes of perfect perception, the ceiling of any connector.

For the procedural benchmarks the truth behind every medium is known: easy-vqa's colour and shape, a
shapes scene's objects and relations, found from where each file lives. An oracle run is a recipe with
``training.oracle: true``: the same frozen LM, soft prompt and training budget, but the perceptual input
is zeroed (as for the blind baseline) and the medium's content is written as text before the prompt.
eP-ALM - blind is what perception adds, oracle - eP-ALM the connector's loss, 100 - oracle the LM's
(DESIGN.md, section 5).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from .benchmarks import scenes
from .data import Example, easyvqa

CONTEXT = "The image shows {truth}."  # the probe's wording that measured what each packaged LM compares


def truths(media: Iterable[str]) -> dict[str, str]:
    """The content of each medium as text, by resolved path.

    Where a file lives says what is known about it: easy-vqa's image folders (its answers, then its pixels),
    or the images folder of shapes scenes that ``sensorium data make-scenes`` wrote (their plans). Any data
    spec over those files therefore has an oracle: the benchmark's own, a manifest, a validation split.
    """
    known: dict[str, str] = {}
    for folder in sorted({Path(m).resolve().parent for m in media}):
        known.update(_truths_in(folder))
    return known


def _truths_in(folder: Path) -> dict[str, str]:
    """The truths of the media in one folder, by resolved path; empty where the folder is no known benchmark's."""
    for split in easyvqa.SPLITS:
        if folder == easyvqa.images_folder(split):
            return {str(Path(path).resolve()): text for path, text in easyvqa.truths(split).items()}
    meta = folder.parent / "meta.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("generator") == scenes.BENCHMARK.generator):
        return {}
    described = {}
    for split in scenes.SPLITS:
        plans = folder.parent / f"{scenes.BENCHMARK.plans}_{split}.json"
        if plans.is_file():
            for plan in json.loads(plans.read_text())[scenes.BENCHMARK.plans]:
                described[str((folder / plan["file_name"]).resolve())] = scenes.describe(plan)
    return described


def with_truth(examples: list[Example]) -> list[Example]:
    """The examples, each carrying its medium's content as the text that precedes its prompt: the benchmark's own
    where the file is a known benchmark's, else the truth the data states (``Example.extra["truth"]``: a dataset's
    or a manifest's ``truth``)."""
    known = truths(e.media for e in examples)
    stated = [known.get(str(Path(e.media).resolve()), e.extra.get("truth")) for e in examples]
    missing = [e.media for e, truth in zip(examples, stated, strict=True) if not truth]
    if missing:
        raise ValueError(f"text oracle: no known content for {len(missing)} file(s), e.g. {missing[0]}: the truth "
                         "is known for easy-vqa's images and for the shapes scenes of 'sensorium data make-scenes', "
                         "or stated by a 'truth' field of the data")
    return [dataclasses.replace(e, extra={**e.extra, "context": CONTEXT.format(truth=truth)})
            for e, truth in zip(examples, stated, strict=True)]
