"""Training the methods' runs: the validation split, each run's recipe and folder, the learning-rate grid,
the seeds, and worker processes; then the whole comparison, from data to report."""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data import read_dataset, split_validation, write_manifest
from ..recipe import Recipe, TrainingOptions
from .comparison import Comparison, Method, merge_recipe, method_model
from .measure import TEST_RESULT, Evaluator, evaluator_for, with_relative
from .report import write_report

RUN_RECIPE = "recipe.yaml"  # the recipe a run was trained with, beside its summary


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def method_recipe(comparison: Comparison, method: Method, lr: float, seed: int, data: dict[str, Any],
                  out: Path) -> Recipe:
    """The base recipe, the method's overrides, then the run's rate, seed, data and folder.

    The soft prompt's rate keeps its ratio to the connector's from the recipe.
    """
    values = merge_recipe(comparison.recipe, method.overrides)
    training = values.setdefault("training", {})
    ratio = float(training.get("prompt_lr", TrainingOptions.prompt_lr)) / float(training.get("lr", TrainingOptions.lr))
    training.update(lr=lr, prompt_lr=lr * ratio, seed=seed)
    values.update(data=data, out=str(out))
    return Recipe.from_dict(values)


def run_folder(comparison: Comparison, method: Method, lr: float, seed: int) -> Path:
    return comparison.out / "runs" / method.name / f"lr-{lr:g}" / f"seed-{seed}"


def _plain(values: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(values))


def trained(recipe: Recipe) -> dict[str, Any]:
    """The run's summary: from its folder when it finished with this very recipe, else trained now."""
    from ..train import train

    out = Path(recipe.out)
    summary, saved = out / "summary.json", out / RUN_RECIPE
    settings = _plain(recipe.to_dict())  # before training, which records the recipe inside the model config
    if summary.is_file() and saved.is_file() and yaml.safe_load(saved.read_text()) == settings:
        return json.loads(summary.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for stale in (saved, out / TEST_RESULT):  # a run trained anew must be scored anew
        stale.unlink(missing_ok=True)
    result = train(recipe, restart=True)  # an interrupted comparison's run is trained again
    saved.write_text(yaml.safe_dump(settings))
    return result


def validation_score(summary: dict[str, Any], task: str) -> float:
    return summary["caption_scores"]["CIDEr"] if task == "caption" else summary["accuracy"]


def score_method(comparison: Comparison, method: Method, data: dict[str, dict], evaluator: Evaluator) -> dict:
    """Tune the rate on validation (first seed), train the other seeds at it, score all on the test set."""
    task, first = comparison.task, comparison.seeds[0]
    grid = {}
    for lr in method.lr_grid:
        log(f"[{method.name}] lr {lr:g}, seed {first}: training (learning-rate grid)")
        recipe = method_recipe(comparison, method, lr, first, data, run_folder(comparison, method, lr, first))
        grid[lr] = validation_score(trained(recipe), task)
    chosen = max(grid, key=grid.get)  # the first of equals: the grid's order decides ties
    log(f"[{method.name}] validation scores {', '.join(f'{lr:g}: {s:.2f}' for lr, s in grid.items())}; "
        f"chosen lr {chosen:g}")
    runs = []
    for seed in comparison.seeds:
        folder = run_folder(comparison, method, chosen, seed)
        log(f"[{method.name}] lr {chosen:g}, seed {seed}: training and test")
        summary = trained(method_recipe(comparison, method, chosen, seed, data, folder))
        test = evaluator.score(folder)
        runs.append({"seed": seed, "folder": str(folder), "validation": validation_score(summary, task),
                     "test": test["score"], "test_per_type": test.get("accuracy_per_type", {}),
                     "train_seconds": summary["train_seconds"]})
    scores = [run["test"] for run in runs]
    per_type = {kind: statistics.mean(run["test_per_type"][kind] for run in runs) for kind in runs[0]["test_per_type"]}
    return {"name": method.name, "lm": method_model(comparison, method).lm, "overrides": method.overrides,
            "lr_grid": method.lr_grid,
            "validation_by_lr": {f"{lr:g}": score for lr, score in grid.items()}, "chosen_lr": chosen, "runs": runs,
            "score_mean": statistics.mean(scores), "score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "per_type_mean": per_type, "train_seconds": statistics.mean(run["train_seconds"] for run in runs)}


def compare_method(comparison: Comparison, method: Method, data: dict[str, dict], evaluator: Evaluator) -> dict:
    """The method's scores, then its inference costs, measured on its first seed's adapter."""
    result = score_method(comparison, method, data, evaluator)
    return {**result, **evaluator.costs(Path(result["runs"][0]["folder"]))}


def _claim_gpu(gpus: Any) -> None:
    """Worker start-up: take the next GPU of the queue (round robin), before anything touches CUDA."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def _score_in_worker(comparison: Comparison, method: Method, data: dict[str, dict]) -> None:
    score_method(comparison, method, data, evaluator_for(comparison))


def score_in_parallel(comparison: Comparison, data: dict[str, dict], jobs: int) -> None:
    """Train and score the methods in ``jobs`` worker processes; their runs and test scores stay in their folders."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    gpus = context.Queue()
    count = torch.cuda.device_count()
    for worker in range(jobs):
        gpus.put(worker % count if count else "")
    log(f"training {len(comparison.methods)} methods in {jobs} worker processes"
        + (f" over {count} GPU(s)" if count else ""))
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_claim_gpu, initargs=(gpus,)) as pool:
        futures = {pool.submit(_score_in_worker, comparison, m, data): m.name for m in comparison.methods}
        for future in futures:
            try:
                future.result()
            except Exception as error:
                raise RuntimeError(f"method '{futures[future]}' failed in its worker: {error}") from error


def run(comparison: Comparison, jobs: int = 1) -> dict[str, Any]:
    """Train and score every method; write comparison.md, comparison.json and comparison.png in ``out``."""
    from ..bench.common import machine

    base = Recipe.from_dict(comparison.recipe)
    labelled = [e for e in read_dataset(base.data["train"]) if e.answers]
    training, validation = split_validation(labelled, comparison.validation)
    data = {"train": write_manifest(training, comparison.out / "data" / "train.jsonl"),
            "eval": write_manifest(validation, comparison.out / "data" / "validation.jsonl")}
    log(f"data: {len(training):,} training and {len(validation):,} validation examples "
        f"(held out by media file); the test set is {base.data['eval']}")
    started = time.perf_counter()
    if jobs > 1:
        score_in_parallel(comparison, data, jobs)
    evaluator = evaluator_for(comparison)
    results = with_relative([compare_method(comparison, m, data, evaluator) for m in comparison.methods],
                            comparison.baseline)
    metric = "CIDEr" if comparison.task == "caption" else "accuracy"
    summary = {"task": comparison.task, "metric": metric, "baseline": comparison.baseline,
               "seeds": comparison.seeds, "validation_examples": len(validation), "training_examples": len(training),
               "test": base.data["eval"], "seconds": round(time.perf_counter() - started, 1), "jobs": jobs,
               "machine": machine(str(evaluator.device)), "methods": results}
    print(write_report(summary, comparison.out))
    print(f"written to {comparison.out}/comparison.md, .json and .png")
    return summary
