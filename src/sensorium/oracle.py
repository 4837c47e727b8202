"""The text oracle: what the frozen LM makes of perfect perception, the ceiling of any connector.

For the procedural benchmarks the truth behind every medium is known: easy-vqa's colour and shape, a
shapes scene's objects and relations. An oracle run is a recipe with ``training.oracle: true``: the same
frozen LM, soft prompt and training budget, but the perceptual input is zeroed (as for the blind
baseline) and the medium's content is written as text before the prompt. eP-ALM - blind is what
perception adds, oracle - eP-ALM the connector's loss, 100 - oracle the LM's (DESIGN.md, section 5).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .benchmarks import scenes
from .data import Example, easyvqa

CONTEXT = "The image shows {truth}."  # the probe's wording that measured what each packaged LM compares


def truths(spec: dict[str, Any]) -> dict[str, str]:
    """The content of every medium a data spec can name, as text, by file name."""
    fmt = spec.get("format")
    if fmt == "easy-vqa":
        return {Path(path).name: text for path, text in easyvqa.truths(spec.get("split", "train")).items()}
    folder = Path(spec.get("images", "")).parent
    meta = folder / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("generator") == scenes.BENCHMARK.generator:
        described = {}
        for split in scenes.SPLITS:
            plans = folder / f"{scenes.BENCHMARK.plans}_{split}.json"
            if plans.is_file():
                for plan in json.loads(plans.read_text())[scenes.BENCHMARK.plans]:
                    described[plan["file_name"]] = scenes.describe(plan)
        return described
    raise ValueError(f"no text oracle for data format '{fmt}': the truth is known for easy-vqa and for the "
                     "shapes scenes of 'sensorium data make-scenes'")


def with_truth(examples: list[Example], spec: dict[str, Any]) -> list[Example]:
    """The examples, each carrying its medium's content as the text that precedes its prompt."""
    known = truths(spec)
    missing = [e.media for e in examples if Path(e.media).name not in known]
    if missing:
        raise ValueError(f"text oracle: no known content for {len(missing)} file(s), e.g. {missing[0]}")
    return [dataclasses.replace(e, extra={**e.extra, "context": CONTEXT.format(truth=known[Path(e.media).name])})
            for e in examples]
