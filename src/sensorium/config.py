"""The adapter's configuration: everything needed to rebuild a model around its trained weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
TASKS = ("vqa", "caption")  # question answering, or captioning (no question; the template alone prompts)


@dataclass
class AdapterConfig:
    """Serialised as adapter_config.json beside adapter.safetensors (the PEFT contract)."""

    lm: str = "smollm2-135m"
    encoder: str = "dinov2-small"
    image_size: int | None = None  # encoder input resolution; None keeps the encoder's own
    connector: str = "epalm"
    num_blocks: int = 6  # the [CLS] of the last N encoder blocks ...
    encoder_blocks: list[int] | None = None  # ... or these 0-based blocks, shallow first
    inject_layers: list[int] | None = None  # None: the paper's relative range of LM layers
    prompt_length: int = 1  # trainable soft-prompt tokens at the input
    token_norm: bool = True
    template: str = "Question: {question} Answer:"
    task: str = "vqa"  # one of TASKS
    training: dict[str, Any] = field(default_factory=dict)  # recipe that produced the weights
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluation results at save time

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
