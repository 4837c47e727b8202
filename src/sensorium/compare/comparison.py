"""A comparison file: the base recipe, the methods (each a set of recipe overrides) and the shared settings,
checked whole before any training starts."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..config import AdapterConfig
from ..layout import setting_problems
from ..recipe import Recipe, TrainingOptions

SETTINGS = ("recipe", "overrides", "methods", "baseline", "seeds", "lr_grid", "validation", "latency_batch",
            "latency_repeats", "out")
METHOD_SECTIONS = ("model", "training", "generation", "eval_batch_size")  # what a method may change
# Equal footing: the same steps, batch and seeds for every method; rates come from the grid.
# A method may be a baseline of the same recipe (training.blind, training.oracle) or use another frozen LM
# (model.lm): a ladder of LMs is a comparison whose methods are each LM's eP-ALM, blind and oracle runs.
SHARED_TRAINING = ("batch_size", "max_steps", "gradient_accumulation", "seed", "lr", "prompt_lr")


@dataclass
class Method:
    name: str
    overrides: dict[str, Any]  # recipe sections over the base recipe
    lr_grid: list[float]


@dataclass
class Comparison:
    """A parsed comparison file; ``recipe`` is the base recipe with the comparison's overrides, as a dict."""

    recipe: dict[str, Any]
    methods: list[Method]
    baseline: str
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    validation: int = 500  # training examples held out to choose each method's learning rate
    latency_batch: int = 8
    latency_repeats: int = 3
    out: Path = Path("runs/compare")

    @property
    def task(self) -> str:
        return Recipe.from_dict(self.recipe).model.task


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` written over it, mappings merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_recipe(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recipe overrides: sections merged key by key, except data specs and connector options, which replace
    the base's whole (a spec of another format shares no argument with the one it replaces; options belong to one
    connector, and a method that swaps the connector must be able to drop the base's)."""
    data = {**base.get("data", {}), **overrides.get("data", {})}
    merged = deep_merge(base, {k: v for k, v in overrides.items() if k != "data"})
    options = (overrides.get("model") or {}).get("connector_options")
    if options is not None:
        merged["model"]["connector_options"] = copy.deepcopy(options)
    return {**merged, "data": data} if data else merged


def load_comparison(path: str | Path) -> Comparison:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: comparison file not found")
    values = yaml.safe_load(file.read_text()) or {}
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise ValueError(f"{file}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    if "recipe" not in values or not values.get("methods"):
        raise ValueError(f"{file}: a comparison needs 'recipe' (the base recipe) and 'methods'")
    base = file.parent / values["recipe"]
    if not base.is_file():
        raise FileNotFoundError(f"{base}: base recipe of {file} not found")
    recipe = merge_recipe(yaml.safe_load(base.read_text()) or {}, values.get("overrides") or {})
    grid = [float(lr) for lr in values.get("lr_grid", [recipe.get("training", {}).get("lr", TrainingOptions.lr)])]
    methods = [_method(file, name, spec or {}, grid) for name, spec in values["methods"].items()]
    baseline = values.get("baseline", methods[0].name)
    if baseline not in {m.name for m in methods}:
        raise ValueError(f"{file}: baseline '{baseline}' is not one of the methods")
    comparison = Comparison(recipe, methods, baseline, **{k: values[k] for k in ("seeds", "validation",
                                                                                 "latency_batch", "latency_repeats")
                                                          if k in values})
    comparison.out = Path(values.get("out", comparison.out))
    for method in methods:  # every method must make a valid recipe before hours of training start
        problems = setting_problems(method_model(comparison, method))
        if problems:
            raise ValueError(f"{file}: method '{method.name}': {'; '.join(problems)}")
    if "eval" not in recipe.get("data", {}):
        raise ValueError(f"{base}: the base recipe needs data.eval, the set every method is scored on")
    return comparison


def method_model(comparison: Comparison, method: Method) -> AdapterConfig:
    """The adapter settings a method trains: the base recipe's model with the method's overrides."""
    return Recipe.from_dict(merge_recipe(comparison.recipe, method.overrides)).model


def only(comparison: Comparison, names: list[str]) -> Comparison:
    """The comparison restricted to the named methods (in the file's order); the baseline must be one of them."""
    known = [m.name for m in comparison.methods]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no method {', '.join(map(repr, unknown))} in the comparison; "
                         f"its methods: {', '.join(known)}")
    if comparison.baseline not in names:
        raise ValueError(f"the methods must include the baseline '{comparison.baseline}'")
    return replace(comparison, methods=[m for m in comparison.methods if m.name in names])


def _method(file: Path, name: str, spec: dict[str, Any], grid: list[float]) -> Method:
    spec = dict(spec)
    lr_grid = [float(lr) for lr in spec.pop("lr_grid", grid)]
    unknown = sorted(set(spec) - set(METHOD_SECTIONS))
    if unknown:
        raise ValueError(f"{file}: method '{name}' changes {', '.join(unknown)}; a method may change only "
                         f"{', '.join(METHOD_SECTIONS)} (the data, seeds and output are the comparison's)")
    shared = sorted(set(spec.get("training") or {}) & set(SHARED_TRAINING))
    if shared:
        raise ValueError(f"{file}: method '{name}' changes training.{', training.'.join(shared)}, which every "
                         "method shares (set it under overrides; rates come from lr_grid)")
    return Method(name, spec, lr_grid)
