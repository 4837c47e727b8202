"""Trained adapters read back from their folders: the rules merging, composing, evaluating and training from an
adapter share (where a run keeps its adapter, the recipe an adapter records, which settings decide whether two
adapters can be averaged), below every module that uses them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, model_identity
from .errors import BadInputError
from .model import read_weights
from .recipe import Recipe

ADAPTER_FOLDER = "adapter"  # the run folder's trained adapter

# Settings that decide which tensors an adapter has and where its tokens enter the LM. Adapters that agree on
# all of them can be averaged; task, template, decoding and training settings may differ (a VQA adapter and a
# caption adapter of one image domain interpolate).
LAYOUT_SETTINGS = ("lm", "encoder", "image_size", "num_frames", "temporal", "connector", "connector_options",
                   "num_blocks", "encoder_blocks", "inject_layers", "shared_linear", "prompt_length", "token_norm",
                   "encoder_norm", "prompt_mlp", "layout", "visual_row", "column_order")
# Layout settings naming a frozen model: equal when they name the same model, however spelled (see model_identity).
MODEL_SETTINGS = ("lm", "encoder")
# What an adapter was trained to read besides the media: a blind adapter never saw features, an oracle the
# truth as text; averaging one with a seeing adapter mixes inputs that never met.
INPUT_SETTINGS = ("blind", "oracle")


@dataclass(frozen=True)
class Ingredient:
    """One adapter read from its folder."""

    folder: Path
    config: AdapterConfig
    state: dict[str, torch.Tensor]


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder itself, or the adapter folder of a training run's output."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() and (path / ADAPTER_FOLDER / CONFIG_NAME).is_file():
        return path / ADAPTER_FOLDER
    return path


def read_ingredient(path: str | Path) -> Ingredient:
    folder = adapter_folder(path)
    return Ingredient(folder, AdapterConfig.load(folder), read_weights(folder / WEIGHTS_NAME))


def trained_input(ingredient: Ingredient) -> dict[str, bool]:
    options = recorded_recipe(ingredient.config, ingredient.folder).training
    return {name: getattr(options, name) for name in INPUT_SETTINGS}


def layout_differences(ingredients: Sequence[Ingredient]) -> list[str]:
    """What the adapters disagree on that averaging cannot bridge, one phrase each, against the first."""
    first, problems = ingredients[0], []
    for other in ingredients[1:]:
        for name in LAYOUT_SETTINGS:
            mine, theirs = getattr(first.config, name), getattr(other.config, name)
            if name in MODEL_SETTINGS and model_identity(mine) == model_identity(theirs):
                continue
            if mine != theirs:
                problems.append(f"{name}: {mine!r} in {first.folder}, {theirs!r} in {other.folder}")
        mine, theirs = trained_input(first), trained_input(other)
        if mine != theirs:
            problems.append(f"trained input: {mine} in {first.folder}, {theirs} in {other.folder}")
        shapes = {name: tuple(t.shape) for name, t in first.state.items()}
        other_shapes = {name: tuple(t.shape) for name, t in other.state.items()}
        if not problems and shapes != other_shapes:
            changed = sorted(n for n in shapes.keys() | other_shapes.keys() if shapes.get(n) != other_shapes.get(n))
            problems.append(f"tensors {', '.join(changed)} differ between {first.folder} and {other.folder}")
    return problems


def recorded_recipe(config: AdapterConfig, folder: Path) -> Recipe:
    """The recipe an adapter was trained with, read back through the recipe's schema from the adapter's config,
    where ``train`` records every section but the model (which is the config itself); the defaults for an
    adapter saved outside ``train``. A recorded section the schema refuses is a BadInputError naming the config
    file of the adapter ``folder``.
    """
    try:
        recipe = Recipe.from_dict(config.training)
    except ValueError as error:
        raise BadInputError(f"{folder / CONFIG_NAME}: training (the recipe it was trained with): {error}") from error
    recipe.model = config
    return recipe
