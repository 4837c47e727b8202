"""A training recipe: YAML data describing model, data, optimisation and generation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import AdapterConfig


@dataclass
class TrainingOptions:
    batch_size: int = 32  # global: all processes and accumulation micro-steps of one optimizer step
    max_steps: int = 1000
    lr: float = 1e-3  # connector
    prompt_lr: float = 1e-3  # soft prompt and slot embedding
    weight_decay: float = 0.02
    warmup_steps: int = 50
    grad_clip: float = 1.0
    gradient_accumulation: int = 1
    mixed_precision: str = "auto"  # auto: bf16 where the hardware runs it fast, else no
    eval_every: int = 0  # steps between quick evaluations (0: only at the end)
    quick_eval_size: int = 256
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    blind: bool = False  # zero the visual input: what the question wording alone predicts
    oracle: bool = False  # zero it and state the medium's true content as text: the ceiling (see oracle.py)
    cache_batch_size: int = 32
    cache_workers: int = 1
    lm_dtype: str = "auto"  # frozen LM weights: auto (GPU: the mixed-precision dtype, CPU: float32) or a dtype
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # also wandb, mlflow; [] for none

    def __post_init__(self) -> None:
        # YAML reads 3e-4 (no dot) as a string: accept it as the number it means.
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.type in ("float", "int") and isinstance(value, str):
                try:
                    setattr(self, spec.name, float(value) if spec.type == "float" else int(value))
                except ValueError as error:
                    raise ValueError(f"training.{spec.name}: '{value}' is not a number") from error


@dataclass
class Recipe:
    model: AdapterConfig = field(default_factory=AdapterConfig)
    data: dict[str, Any] = field(default_factory=lambda: {"train": {"format": "easy-vqa", "split": "train"}})
    training: TrainingOptions = field(default_factory=TrainingOptions)
    generation: dict[str, Any] = field(default_factory=dict)  # generate() options over the task's defaults
    eval_batch_size: int = 64
    out: str = "runs/default"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recipe section(s): {', '.join(unknown)}")
        model = AdapterConfig.from_dict(values.pop("model", {}))
        training_values = values.pop("training", {})
        fields = {f.name for f in dataclasses.fields(TrainingOptions)}
        bad = sorted(set(training_values) - fields)
        if bad:
            raise ValueError(f"unknown training option(s): {', '.join(bad)}")
        return cls(model=model, training=TrainingOptions(**training_values), **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """``training.max_steps=200`` style override; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"override '{assignment}' must look like section.key=value")
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(raw)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: recipe not found")
    values = yaml.safe_load(file.read_text()) or {}
    for assignment in overrides:
        apply_override(values, assignment)
    return Recipe.from_dict(values)
