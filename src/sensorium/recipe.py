"""A training recipe: YAML data describing model, data, optimisation and generation."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import StrictBool
from pydantic.dataclasses import dataclass

from .config import SETTINGS, AdapterConfig
from .errors import BadInputError
from .files import MAX_DATA_BYTES, regular_file
from .schema import Integer, NonNegativeNumber, PositiveNumber, bounded, build


@dataclass(config=SETTINGS)
class TrainingOptions:
    batch_size: bounded("batch_size") = 32  # global: all processes and accumulation micro-steps of one optimizer step
    max_steps: bounded("steps") = 1000
    lr: bounded("learning_rate") = 1e-3  # connector
    prompt_lr: bounded("learning_rate") = 1e-3  # soft prompt and slot embedding
    weight_decay: NonNegativeNumber = 0.02
    warmup_steps: bounded("step_count") = 50
    grad_clip: PositiveNumber = 1.0
    gradient_accumulation: bounded("batch_size") = 1
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16 where the hardware runs it fast
    eval_every: bounded("step_count") = 0  # steps between quick evaluations (0: only at the end)
    quick_eval_size: bounded("examples") = 256
    checkpoint_every: bounded("steps") = 200
    keep_checkpoints: bounded("keep_checkpoints") = 2
    seed: Integer = 0
    init_from: str | None = None  # an adapter (or a run's folder) whose tensors start the run, not the seed's
    blind: StrictBool = False  # zero the visual input: what the question wording alone predicts
    oracle: StrictBool = False  # zero it and state the medium's true content as text: the ceiling (see oracle.py)
    cache_batch_size: bounded("batch_size") = 32
    cache_workers: bounded("workers") = 1
    lm_dtype: str = "auto"  # frozen LM weights: auto (GPU: the mixed-precision dtype, CPU: float32) or a dtype
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # also wandb, mlflow; [] for none

    def micro_batch_size(self, processes: int) -> int:
        """Examples per process and accumulation micro-step: the global batch must split evenly.

        The one statement of the batch rule: training and ``--dry-run`` both ask it.
        """
        parts = processes * self.gradient_accumulation
        if self.batch_size % parts:
            raise ValueError(f"training.batch_size={self.batch_size} (the global batch) must be a multiple of "
                             f"processes ({processes}) x training.gradient_accumulation "
                             f"({self.gradient_accumulation}) = {parts}")
        return self.batch_size // parts


@dataclass(config=SETTINGS)
class Recipe:
    model: AdapterConfig = field(default_factory=AdapterConfig)
    data: dict[str, Any] = field(default_factory=lambda: {"train": {"format": "easy-vqa", "split": "train"}})
    training: TrainingOptions = field(default_factory=TrainingOptions)
    generation: dict[str, Any] = field(default_factory=dict)  # generate() options over the task's defaults
    eval_batch_size: bounded("batch_size") = 64
    out: str = "runs/default"

    def __post_init__(self) -> None:
        self.model.check_generation(self.generation, "generation")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """Checked against the declared sections and fields: a one-line ValueError names every wrong one."""
        if isinstance(values, dict):
            values = {**values, "model": AdapterConfig.from_dict(values.get("model", {}), prefix="model."),
                      "training": build(TrainingOptions, values.get("training", {}), "training option", "training.")}
        return build(cls, values, "recipe section")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """``training.max_steps=200`` style override; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"override '{assignment}' must look like section.key=value")
    *parents, leaf = key.split(".")
    node = values
    for depth, part in enumerate(parents, start=1):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override '{assignment}': {'.'.join(parents[:depth])} is not a section")
    node[leaf] = yaml.safe_load(raw)


def read_yaml(file: Path) -> Any:
    """A YAML file's plain values (``safe_load``: never an object), or a one-line BadInputError naming the file: a
    regular file within its size bound only."""
    try:
        return yaml.safe_load(regular_file(file, MAX_DATA_BYTES).read_bytes())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or getattr(error, "reason", None) or type(error).__name__
        raise BadInputError(f"{file}: not valid YAML ({reason}{where})") from error
    except ValueError as error:  # a value YAML recognises but cannot build, such as the date 2024-13-45
        raise BadInputError(f"{file}: not valid YAML ({error})") from error
    except RecursionError as error:
        raise BadInputError(f"{file}: not valid YAML (nested too deeply)") from error


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """A recipe file's mapping of sections, or a one-line BadInputError naming the file."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file}: recipe not found")
    values = read_yaml(file)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise BadInputError(f"{file}: a recipe is a mapping of sections (model, data, training, generation, ...), "
                            f"not a {type(values).__name__}")
    return values


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """The recipe of a YAML file with ``section.key=value`` overrides; every problem is one line naming the file."""
    values = read_recipe_file(path)
    try:
        for assignment in overrides:
            apply_override(values, assignment)
        return Recipe.from_dict(values)
    except ValueError as error:
        raise BadInputError(f"{path}: {error}") from error
