"""The adapter's configuration: everything needed to rebuild a model around its trained weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"

# What a task changes: the text around the media and how answers are decoded. A VQA answer is a word
# or two, read greedily; a caption is a sentence, found by beam search as in the captioning literature.
TASKS: dict[str, dict[str, Any]] = {
    "vqa": {"template": "Question: {question} Answer:", "generation": {"max_new_tokens": 10, "num_beams": 1}},
    "caption": {"template": "A picture of", "generation": {"max_new_tokens": 30, "num_beams": 3}},
}

# How a video encoder's per-frame tokens reach the LM: averaged into one token per block, exactly like an
# image's; one token per frame in time order (the slot then spans one column per frame); or two tokens,
# the mean and the change from the first frame to the last (what moved, grew or turned, as one vector the
# shared linear layer can map to a word, where ``frames`` leaves the comparison of frames to the frozen LM).
TEMPORAL = ("mean", "frames", "change")


@dataclass
class AdapterConfig:
    """Serialised as adapter_config.json beside adapter.safetensors (the PEFT contract)."""

    lm: str = "smollm2-135m"
    encoder: str = "dinov2-small"
    image_size: int | None = None  # encoder input resolution; None keeps the encoder's own
    num_frames: int | None = None  # frames sampled per video; None: 8 for frames:NAME, a video model's own
    temporal: str = "mean"  # mean | frames | change: see TEMPORAL
    connector: str = "epalm"  # epalm | epalm-patches | limber-1 | limber-all | mapl (see connectors/)
    connector_options: dict[str, Any] = field(default_factory=dict)  # the connector's own options
    # Injecting connectors (epalm, epalm-patches) read several blocks and feed LM layers; input connectors
    # (limber-1, limber-all, mapl) read one block, the last unless encoder_blocks names another.
    num_blocks: int = 6  # the [CLS] of the last N encoder blocks ...
    encoder_blocks: list[int] | None = None  # ... or these 0-based blocks, shallow first
    inject_layers: list[int] | None = None  # None: the paper's relative range of LM layers
    shared_linear: bool = True  # one linear layer for all injection layers (False: one per layer)
    prompt_length: int = 1  # trainable soft-prompt tokens at the input
    token_norm: bool = True
    task: str = "vqa"  # vqa | caption
    template: str | None = None  # None: the task's; "{question}" marks where the question goes
    generation: dict[str, Any] = field(default_factory=dict)  # generate() options over the task's defaults
    training: dict[str, Any] = field(default_factory=dict)  # recipe that produced the weights
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluation results at save time

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task '{self.task}'; available: {', '.join(TASKS)}")
        if self.temporal not in TEMPORAL:
            raise ValueError(f"unknown temporal aggregation '{self.temporal}'; available: {', '.join(TEMPORAL)}")
        if self.template is None:
            self.template = TASKS[self.task]["template"]

    def generation_defaults(self) -> dict[str, Any]:
        """Decoding options of this adapter: the task's defaults, then what its recipe set."""
        return {**TASKS[self.task]["generation"], **self.generation}

    def save(self, folder: Path) -> None:
        (folder / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> AdapterConfig:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not an adapter folder (no {CONFIG_NAME})")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown adapter setting(s): {', '.join(unknown)}")
        return cls(**values)
