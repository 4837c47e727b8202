"""``sensorium compare CONFIG``: connectors trained and scored on equal footing, their costs measured beside them.

A comparison file (YAML, see recipes/compare/) names a base training recipe and the methods to compare, each
a set of recipe overrides (``model: {connector: mapl}``). Every method gets the same data, steps, batch and
seeds; only its connector learning rate is tuned, on a grid, against a validation split held out of the
training data (by media file, so no validation image is trained on). The chosen rate is then trained with
every seed and scored on the base recipe's eval set. The table gives the score (mean ± std over seeds) and
the costs, each relative to the baseline method (eP-ALM): trainable parameters, adapter size on disk,
training time, generation latency per sample (same process, same batch, answers forced to one length) and
KV-cache bytes per sample (from the layout length and the LM's configuration).

Finished runs are reused when the comparison is run again with the same settings (their folder holds the
recipe they were trained with), so an interrupted comparison continues where it stopped. It runs on the GPU
when there is one. With ``jobs`` > 1, methods train in that many worker processes at once (spread over the
GPUs when there are several): small frozen models leave one GPU mostly idle between kernel launches, so a
few processes share it well. The costs are then measured afterwards in the main process alone, so that no
worker's load skews a latency. ``--smoke`` runs the same methods end to end in seconds on tiny random
models and data, as a test of the whole path.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import PartialState

from .config import WEIGHTS_NAME
from .connectors import connector_options
from .data import Example, read_dataset
from .evaluate import headline, predict_all, report
from .lm import load_lm
from .model import PerceptualLM
from .recipe import Recipe, TrainingOptions

SETTINGS = ("recipe", "overrides", "methods", "baseline", "seeds", "lr_grid", "validation", "latency_batch",
            "latency_repeats", "out")
METHOD_SECTIONS = ("model", "training", "generation", "eval_batch_size")  # what a method may change
# Equal footing: the same steps, batch and seeds for every method; rates come from the grid.
SHARED_TRAINING = ("batch_size", "max_steps", "gradient_accumulation", "seed", "lr", "prompt_lr", "blind")
RUN_RECIPE = "recipe.yaml"
TEST_RESULT = "test.json"


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
    """Recipe overrides: sections merged key by key, except data specs, which replace the base's whole
    (a spec of another format shares no argument with the one it replaces)."""
    data = {**base.get("data", {}), **overrides.get("data", {})}
    merged = deep_merge(base, {k: v for k, v in overrides.items() if k != "data"})
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
        model = Recipe.from_dict(merge_recipe(recipe, method.overrides)).model
        unknown = sorted(set(model.connector_options) - set(connector_options(model.connector)))
        if unknown:
            raise ValueError(f"{file}: method '{method.name}': connector '{model.connector}' has no option "
                             f"{', '.join(unknown)}")
    if "eval" not in recipe.get("data", {}):
        raise ValueError(f"{base}: the base recipe needs data.eval, the set every method is scored on")
    return comparison


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


# ---- data -------------------------------------------------------------------------------------
def split_validation(examples: list[Example], size: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(training, validation): whole media files move to validation, in a seeded order, until it holds ``size``."""
    media = sorted({e.media for e in examples})
    random.Random(seed).shuffle(media)
    held, count = set(), 0
    per_media: dict[str, int] = {}
    for example in examples:
        per_media[example.media] = per_media.get(example.media, 0) + 1
    for name in media:
        if count >= size:
            break
        held.add(name)
        count += per_media[name]
    if len(held) == len(media):
        raise ValueError(f"validation: {size} examples would leave no training data ({len(examples)} examples)")
    return [e for e in examples if e.media not in held], [e for e in examples if e.media in held]


def write_manifest(examples: list[Example], path: Path) -> dict[str, Any]:
    """A JSONL manifest of the examples (absolute media paths); returns its data spec."""
    lines = []
    for example in examples:
        record = {"media": str(Path(example.media).resolve()), "id": example.question_id}
        if example.answer_type == "caption":
            record["captions"] = example.answers
        else:
            record.update(question=example.question, answers=example.answers, answer_type=example.answer_type)
        lines.append(json.dumps(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return {"format": "jsonl", "path": str(path)}


# ---- runs -------------------------------------------------------------------------------------
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
    from .train import train

    out = Path(recipe.out)
    summary, saved = out / "summary.json", out / RUN_RECIPE
    settings = _plain(recipe.to_dict())  # before training, which records the recipe inside the model config
    if summary.is_file() and saved.is_file() and yaml.safe_load(saved.read_text()) == settings:
        return json.loads(summary.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for stale in (saved, out / TEST_RESULT):  # a run trained anew must be scored anew
        stale.unlink(missing_ok=True)
    result = train(recipe)
    saved.write_text(yaml.safe_dump(settings))
    return result


def validation_score(summary: dict[str, Any], task: str) -> float:
    return summary["caption_scores"]["CIDEr"] if task == "caption" else summary["accuracy"]


@dataclass
class Evaluator:
    """Scores and costs of trained adapters on the test set, over one frozen LM loaded once."""

    lm: Any
    tokenizer: Any
    test: list[Example]
    options: TrainingOptions  # the feature cache's batch size and workers
    batch_size: int
    latency_batch: int
    latency_repeats: int
    device: torch.device

    def load(self, run: Path) -> PerceptualLM:
        model = PerceptualLM.from_pretrained(run / "adapter", lm=self.lm, tokenizer=self.tokenizer)
        return model.to(self.device).eval()

    def features(self, model: PerceptualLM) -> tuple[list[Example], torch.Tensor, dict[str, int]]:
        from .train import cached_features

        examples, features, row_of, _ = cached_features(model, self.test, self.options, skip_bad=False)
        return examples, features, row_of

    def score(self, run: Path) -> float:
        """The run's test score (accuracy or CIDEr), kept in its folder."""
        saved = run / TEST_RESULT
        if saved.is_file():
            return json.loads(saved.read_text())["score"]
        model = self.load(run)
        examples, features, row_of = self.features(model)
        records = predict_all(model, examples, features, row_of, self.batch_size, progress=False)
        name, value = headline(report(model.config.task, records))
        saved.write_text(json.dumps({"metric": name, "score": value, "examples": len(records)}) + "\n")
        return value

    def costs(self, run: Path) -> dict[str, Any]:
        """Inference costs of the run's adapter, measured now (all methods in the same process)."""
        from .bench.common import Timer

        model = self.load(run)
        examples, features, row_of = self.features(model)
        batch = [examples[i % len(examples)] for i in range(self.latency_batch)]
        batch_features = features[[row_of[e.media] for e in batch]]
        questions = [e.question for e in batch]
        options = model.generation_options()
        length = options["max_new_tokens"]
        exact = {"min_new_tokens": length, "max_new_tokens": length}  # EOS held back: equal work for all
        timer = Timer(str(self.device), self.latency_repeats, warmup=1)
        seconds = timer.median(lambda: model.generate(batch_features, questions, **exact))
        prompt_tokens = statistics.mean(len(ids) for ids in model.prompt_ids([e.question for e in examples]))
        tokens = model.prefix_length + prompt_tokens + length
        return {"trainable_parameters": model.parameter_counts()[0],
                "adapter_bytes": (run / "adapter" / WEIGHTS_NAME).stat().st_size,
                "slot_columns": model.slot_count, "prefix_columns": model.prefix_length,
                "latency_ms_per_sample": 1000 * seconds / len(batch),
                "kv_bytes_per_sample": kv_bytes_per_token(model.lm) * tokens * options.get("num_beams", 1)}


def kv_bytes_per_token(lm) -> int:
    """Keys and values of one position over all layers, in the LM's weight dtype."""
    text = lm.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * next(lm.parameters()).element_size()


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
        runs.append({"seed": seed, "folder": str(folder), "validation": validation_score(summary, task),
                     "test": evaluator.score(folder), "train_seconds": summary["train_seconds"]})
    scores = [run["test"] for run in runs]
    return {"name": method.name, "overrides": method.overrides, "lr_grid": method.lr_grid,
            "validation_by_lr": {f"{lr:g}": score for lr, score in grid.items()}, "chosen_lr": chosen, "runs": runs,
            "score_mean": statistics.mean(scores), "score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "train_seconds": statistics.mean(run["train_seconds"] for run in runs)}


def compare_method(comparison: Comparison, method: Method, data: dict[str, dict], evaluator: Evaluator) -> dict:
    """The method's scores, then its inference costs, measured on its first seed's adapter."""
    result = score_method(comparison, method, data, evaluator)
    return {**result, **evaluator.costs(Path(result["runs"][0]["folder"]))}


RELATIVE = ("trainable_parameters", "adapter_bytes", "train_seconds", "latency_ms_per_sample", "kv_bytes_per_sample")


def with_relative(results: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each method's costs as ratios to the baseline's, its score as a difference in points."""
    base = next(r for r in results if r["name"] == baseline)
    for result in results:  # None where the baseline's figure is 0 (a run too short to time)
        result["relative"] = {"score_delta": result["score_mean"] - base["score_mean"],
                              **{key: result[key] / base[key] if base[key] else None for key in RELATIVE}}
    return results


def evaluator_for(comparison: Comparison) -> Evaluator:
    """The test set and the frozen LM as training holds it (bf16 on a GPU by default), loaded once, so that
    latency and KV cache are measured as the adapters would run."""
    from .train import lm_dtype, mixed_precision

    base = Recipe.from_dict(comparison.recipe)
    device = PartialState().device
    dtype = lm_dtype(base.training.lm_dtype, mixed_precision(base.training.mixed_precision), device)
    lm, tokenizer = load_lm(base.model.lm, dtype, device_map={"": device})
    return Evaluator(lm, tokenizer, read_dataset(base.data["eval"]), base.training, base.eval_batch_size,
                     comparison.latency_batch, comparison.latency_repeats, device)


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
    from .bench.common import machine

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
    comparison.out.mkdir(parents=True, exist_ok=True)
    (comparison.out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown_table(summary)
    (comparison.out / "comparison.md").write_text(table)
    plot(summary, comparison.out / "comparison.png")
    print(table)
    print(f"written to {comparison.out}/comparison.md, .json and .png")
    return summary


# ---- report -----------------------------------------------------------------------------------
def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _size(count: float) -> str:
    return f"{count / 2**20:.2f} MB" if count >= 2**20 else f"{count / 2**10:.1f} KB"


def markdown_table(summary: dict[str, Any]) -> str:
    metric, baseline = summary["metric"], summary["baseline"]
    header = (f"| method | lr (grid) | {metric} (mean ± std, {len(summary['seeds'])} seeds) | vs {baseline} | "
              "trainable params | adapter size | training time | latency / sample | KV cache / sample | "
              "slot columns |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for result in summary["methods"]:
        relative = result["relative"]
        grid = ", ".join(f"{lr:g}" for lr in result["lr_grid"])
        lines.append(
            f"| {result['name']} | **{result['chosen_lr']:g}** ({grid}) | "
            f"{result['score_mean']:.2f} ± {result['score_std']:.2f} | {relative['score_delta']:+.2f} | "
            f"{result['trainable_parameters']:,} ({_ratio(relative['trainable_parameters'])}) | "
            f"{_size(result['adapter_bytes'])} ({_ratio(relative['adapter_bytes'])}) | "
            f"{result['train_seconds']:.1f} s ({_ratio(relative['train_seconds'])}) | "
            f"{result['latency_ms_per_sample']:.1f} ms ({_ratio(relative['latency_ms_per_sample'])}) | "
            f"{_size(result['kv_bytes_per_sample'])} ({_ratio(relative['kv_bytes_per_sample'])}) | "
            f"{result['slot_columns']} |")
    notes = (f"\n{summary['training_examples']:,} training and {summary['validation_examples']:,} validation "
             f"examples; test: {summary['test']}. Ratios are against {baseline}; the learning rate was chosen "
             f"on validation with seed {summary['seeds'][0]}. Latency: generate() with the KV cache, "
             "answers forced to the decoding length, median of repeats; KV cache: layout length x layers x "
             "key/value width x beams, in the LM's dtype.\n")
    return "\n".join(lines) + "\n" + notes


def plot(summary: dict[str, Any], path: Path) -> None:
    """Score against inference cost (latency and KV cache per sample), one marker per method."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display, no pyplot state

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    costs = (("latency_ms_per_sample", 1, "generation latency per sample (ms)"),
             ("kv_bytes_per_sample", 2**-10, "KV cache per sample (KiB)"))
    for axes, (key, scale, label) in zip(panels, costs, strict=True):
        for index, result in enumerate(summary["methods"]):
            axes.errorbar(result[key] * scale, result["score_mean"], yerr=result["score_std"], capsize=3,
                          marker="osD^v<>ph*"[index % 10], linestyle="none", label=result["name"])
        axes.set(xlabel=label, xscale="log")
        axes.xaxis.set_major_formatter(_log_tick_label(axes))
        axes.xaxis.set_minor_formatter(_log_tick_label(axes))
        axes.grid(alpha=0.3)
    panels[0].set_ylabel(f"{summary['metric']} (mean ± std over {len(summary['seeds'])} seeds)")
    panels[1].legend(loc="best", fontsize="small")
    figure.suptitle(f"{summary['metric']} against inference cost")
    figure.savefig(path, dpi=100)


def _log_tick_label(axes):
    """Plain numbers on a log axis (not powers of ten); over more than half a decade only the ticks at
    1, 2, 3 and 5 times a power of ten, so that the labels of 6..9 do not run into each other."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _position: int) -> str:
        low, high = axes.get_xlim()
        leading = round(value / 10 ** math.floor(math.log10(value)))
        return f"{value:g}" if math.log10(high / low) <= 0.5 or leading in (1, 2, 3, 5) else ""

    return FuncFormatter(label)


# ---- dry run ----------------------------------------------------------------------------------
def dry_run(comparison: Comparison) -> tuple[int, str]:
    """Every method's recipe through ``train --dry-run`` (base data, first rate): (exit code, reports)."""
    from .dryrun import dry_run as dry_run_recipe

    reports, code = [], 0
    with tempfile.TemporaryDirectory() as scratch:
        for method in comparison.methods:
            recipe = method_recipe(comparison, method, method.lr_grid[0], comparison.seeds[0],
                                   comparison.recipe["data"], run_folder(comparison, method, method.lr_grid[0],
                                                                         comparison.seeds[0]))
            path = Path(scratch) / f"{method.name}.yaml"
            path.write_text(yaml.safe_dump(recipe.to_dict()))
            result = dry_run_recipe(path)
            code = max(code, result.exit_code)
            reports.append(f"== {method.name}\n{result.format()}")
    return code, "\n".join(reports)


# ---- smoke ------------------------------------------------------------------------------------
SMOKE_COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
SMOKE_WORDS = ("question answer what color is the shape a an picture of square red green blue yellow "
               "small large").split()


def smoke(comparison: Comparison, folder: Path) -> Comparison:
    """The same methods on tiny random models and a tiny colour data set, a few steps each: seconds, not hours.

    The tiny LM has 30 layers and the tiny ViT 12 blocks, the depths of the default models, so that
    methods naming layers or blocks keep their meaning.
    """
    models = _smoke_models(folder / "models")
    data = _smoke_data(folder / "data", comparison.task)
    recipe = merge_recipe(comparison.recipe, {
        "model": {**models, "image_size": 32},
        "data": data,
        "training": {"batch_size": 4, "max_steps": 2, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 100,
                     "mixed_precision": "no", "lm_dtype": "float32", "cache_workers": 0, "trackers": []},
        "generation": {"max_new_tokens": 3},
        "eval_batch_size": 8,
    })
    methods = [replace(m, lr_grid=m.lr_grid[:2]) for m in comparison.methods]
    return replace(comparison, recipe=recipe, methods=methods, seeds=comparison.seeds[:2], validation=4,
                   latency_batch=2, latency_repeats=1, out=folder)


def _smoke_models(folder: Path) -> dict[str, str]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, ViTConfig, ViTModel

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocabulary = {token: i for i, token in enumerate([*specials, ":", "?", *SMOKE_WORDS])}
    core = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(vocabulary), hidden_size=16, intermediate_size=32, num_hidden_layers=30, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        trust_remote_code=False)
    lm.save_pretrained(folder / "lm")
    tokenizer.save_pretrained(folder / "lm")
    vit = ViTConfig(hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8)
    ViTModel(vit, add_pooling_layer=False).save_pretrained(folder / "vit")
    return {"lm": str(folder / "lm"), "encoder": str(folder / "vit")}


def _smoke_data(folder: Path, task: str) -> dict[str, dict]:
    """Squares of four colours at three sizes; a question about the colour, or a caption naming it."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for name, rgb in SMOKE_COLORS.items():
        for size in (8, 16, 24):
            image = Image.new("RGB", (32, 32), (255, 255, 255))
            image.paste(rgb, (4, 4, 4 + size, 4 + size))
            path = folder / f"{name}-{size}.png"
            image.save(path)
            if task == "caption":
                words = f"a {'small' if size < 16 else 'large'} {name} square"
                examples.append(Example(str(path), "", [words], "caption", path.stem))
            else:
                examples.append(Example(str(path), "what color is the shape ?", [name], "other", path.stem))
    test = [e for e in examples if e.media.endswith("-16.png")]
    train = [e for e in examples if e not in test]
    return {"train": write_manifest(train, folder / "train.jsonl"), "eval": write_manifest(test, folder / "test.jsonl")}
