"""Adapters combined without training: weighted averages of their trainable tensors.

An adapter is a few hundred KB over one shared frozen LM, so what model soups (Wortsman et al. 2022) and
weight interpolation between tasks (UnIVAL, Shukor et al. 2023) do to whole networks costs almost nothing
here. Averaging is only meaningful between adapters that put the same tensors in the same places: the same
frozen LM and encoder, the same connector and the same layout of the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .config import MULTITASK, TASKS
from .errors import BadInputError
from .evaluate import headline, predict_all, report, scoring_task
from .model import build_model
from .recipe import TrainingOptions
from .train import cached_features, task_examples
from .trained import Ingredient, layout_differences, trained_input


def normalised(weights: Sequence[float] | None, count: int) -> list[float]:
    """Weights summing to one (uniform when none are given): a soup is an average, not a sum.

    Each weight is first divided by the largest, so that the sum cannot overflow (1e308 + 1e308 is inf, and
    inf / inf would make every weight NaN) nor vanish below the smallest float.
    """
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weight(s) for {count} adapters")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or max(weights) == 0:
        raise ValueError(f"weights must be finite numbers >= 0, not all 0, not {weights}")
    scaled = [w / max(weights) for w in weights]
    return [w / math.fsum(scaled) for w in scaled]


def average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """sum_i weights[i] * states[i], tensor by tensor, in float32."""
    return {name: sum(w * state[name].float() for w, state in zip(weights, states, strict=True))
            for name in states[0]}


def merge(ingredients: Sequence[Ingredient], weights: Sequence[float] | None = None) -> Ingredient:
    """The weighted average of adapters that share a layout, or one line naming what differs.

    The result keeps the first adapter's settings (task, template, decoding), except that adapters of both
    tasks merge into a multitask adapter (see ``merged_task``), and records where it came from.
    """
    if len(ingredients) < 2:
        raise ValueError("merging needs at least two adapters")
    problems = layout_differences(ingredients)
    if problems:
        raise BadInputError("adapters cannot be merged: " + "; ".join(problems))
    weights = normalised(weights, len(ingredients))
    first = ingredients[0]
    provenance = {"ingredients": [str(i.folder) for i in ingredients], "weights": weights}
    config = replace(first.config, **merged_task(ingredients), merged_from=provenance, metrics={})
    return Ingredient(first.folder, config, average([i.state for i in ingredients], weights))


def merged_task(ingredients: Sequence[Ingredient]) -> dict:
    """Task, template and decoding of a merge: the first adapter's when it does every ingredient's task;
    otherwise a multitask adapter that asks with the template of the first adapter that answers questions
    and decodes each task as the first adapter doing that task did."""
    configs = [ingredient.config for ingredient in ingredients]
    tasks = [task for task in TASKS if any(config.does(task) for config in configs)]
    if all(configs[0].does(task) for task in tasks):
        return {}
    doing = {task: next(config for config in configs if config.does(task)) for task in tasks}
    return {"task": MULTITASK, "template": doing["vqa"].template,
            "generation": {task: config.recipe_generation(task) for task, config in doing.items()}}


def save(soup: Ingredient, out: str | Path, lm=None, tokenizer=None, encoder=None) -> Path:
    """Write the soup as an ordinary adapter folder: it loads, evaluates and serves like any other. The tensors
    are checked against a model of the soup's layout (over ``lm`` and ``encoder`` where given) first."""
    model = build_model(soup.config, lm=lm, tokenizer=tokenizer, encoder=encoder)
    model.load_adapter_state(soup.state, "merged adapter")
    model.save_pretrained(out)
    return Path(out)


class HeldOutScorer:
    """The headline score (VQA accuracy or CIDEr) of adapter tensors on a held-out split.

    One model of the layout is built and the split's features cached once; each call only swaps the trainable
    tensors, so a greedy soup over N ingredients costs 2N - 1 evaluations and no reload. The data says the
    task (one task per split), which the ingredient must do: its config decodes it (template, decoding).
    """

    def __init__(self, ingredient: Ingredient, data: dict, batch_size: int = 64, lm=None, tokenizer=None,
                 encoder=None) -> None:
        self.model = build_model(ingredient.config, lm=lm, tokenizer=tokenizer, encoder=encoder).eval()
        options = TrainingOptions(**trained_input(ingredient))
        self.examples, self.features, self.row_of, _ = cached_features(
            self.model, task_examples(data, options), options, skip_bad=False)
        self.task = scoring_task(ingredient.config, self.examples)
        if not any(example.answers for example in self.examples):
            raise BadInputError(f"{data}: held-out data without references: nothing to score adapters by")
        self.batch_size = batch_size

    def __call__(self, state: dict[str, torch.Tensor]) -> float:
        self.model.load_adapter_state(state, "scored adapter")
        records = predict_all(self.model, self.examples, self.features, self.row_of, self.batch_size, progress=False)
        return headline(report(self.task, records))[1]


def greedy_soup(ingredients: Sequence[Ingredient], score: Callable[[dict[str, torch.Tensor]], float],
                log: Callable[[str], None] = print) -> tuple[list[Ingredient], float, list[dict]]:
    """Greedy soup: ingredients ranked by their own held-out score; each joins the uniform average only when
    the average's held-out score does not drop. Never below the best single ingredient on that split.

    Returns the chosen ingredients, the soup's held-out score and one record per ingredient.
    """
    own = [score(ingredient.state) for ingredient in ingredients]
    ranked = sorted(zip(own, ingredients, strict=True), key=lambda pair: -pair[0])
    best_score, chosen = ranked[0]
    soup, soup_score = [chosen], best_score
    records = [{"adapter": str(chosen.folder), "own_score": best_score, "kept": True, "soup_score": soup_score}]
    log(f"{chosen.folder}: {best_score:.2f} (best single adapter, kept)")
    for own_score, candidate in ranked[1:]:
        trial = soup + [candidate]
        trial_score = score(average([i.state for i in trial], normalised(None, len(trial))))
        kept = trial_score >= soup_score
        if kept:
            soup, soup_score = trial, trial_score
        records.append({"adapter": str(candidate.folder), "own_score": own_score, "kept": kept,
                        "soup_score": trial_score})
        log(f"{candidate.folder}: {own_score:.2f} alone, soup with it {trial_score:.2f} "
            f"({'kept' if kept else 'left out'})")
    return soup, soup_score, records


def interpolation(first: Ingredient, second: Ingredient, steps: int = 11) -> list[tuple[float, dict]]:
    """(a, (1 - a) * first + a * second) for a = 0, 1/(steps - 1), ..., 1: the path between two tasks' adapters."""
    problems = layout_differences([first, second])
    if problems:
        raise BadInputError("adapters cannot be interpolated: " + "; ".join(problems))
    alphas = [round(i / (steps - 1), 6) for i in range(steps)]
    return [(a, average([first.state, second.state], [1 - a, a])) for a in alphas]


def interpolation_table(first: Ingredient, second: Ingredient, first_data: dict, second_data: dict,
                        steps: int = 11, batch_size: int = 64) -> list[dict]:
    """Both tasks' held-out scores at each weight a of (1 - a) * first + a * second (one LM loaded once).

    Each task is scored with its own adapter's settings (template, decoding): the weights move, the tasks stay.
    """
    first_scorer = HeldOutScorer(first, first_data, batch_size)
    shared = first_scorer.model
    second_scorer = HeldOutScorer(second, second_data, batch_size, shared.lm, shared.tokenizer, shared.encoder)
    return [{"alpha": alpha, "first": first_scorer(state), "second": second_scorer(state)}
            for alpha, state in interpolation(first, second, steps)]


def plot_interpolation(rows: list[dict], labels: tuple[str, str], path: Path) -> None:
    """Each task's score against the interpolation weight; one axis per task, as their metrics differ in scale."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display, no pyplot state

    figure = Figure(figsize=(6.5, 4), layout="constrained")
    left = figure.subplots()
    right = left.twinx()
    alphas = [row["alpha"] for row in rows]
    left.plot(alphas, [row["first"] for row in rows], marker="o", color="tab:blue")
    right.plot(alphas, [row["second"] for row in rows], marker="s", color="tab:orange")
    left.set(xlabel="a: weight of the second adapter", ylabel=labels[0])
    right.set_ylabel(labels[1])
    left.yaxis.label.set_color("tab:blue")
    right.yaxis.label.set_color("tab:orange")
    left.grid(alpha=0.3)
    figure.suptitle("(1 - a) * first + a * second")
    figure.savefig(path, dpi=100)
