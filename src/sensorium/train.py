"""The training loop, on Accelerate: one CPU here, one or many GPUs with `accelerate launch`.

Only the connector, the soft prompt and the slot embedding train. The frozen encoder runs once per
image through the feature cache; every step after that is connector + frozen LM forward/backward.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .cache import FeatureCache
from .data import Example, read_dataset
from .evaluate import headline, predict_all, predictions_name, report, write_predictions
from .model import PerceptualLM
from .recipe import Recipe, TrainingOptions

STATE_NAME = "training_state.pt"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mixed_precision(choice: str) -> str:
    """'auto' picks bf16 on GPUs that have it and on CPUs with native bf16 matrix instructions."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"


def cached_features(model: PerceptualLM, examples: list[Example], options: TrainingOptions,
                    skip_bad: bool) -> tuple[list[Example], torch.Tensor, dict[str, int], float]:
    """Features for the examples' media (encoder run only for files not cached yet)."""
    started = time.perf_counter()
    cache = FeatureCache(model.encoder)
    features, row_of, errors = cache.features([e.media for e in examples], options.cache_batch_size,
                                              options.cache_workers, skip_bad)
    if errors:
        log(f"skipped {len(errors)} unreadable file(s), e.g. {errors[0]}")
    kept = [e for e in examples if e.media in row_of]
    if options.blind:
        features = torch.zeros_like(features)
    return kept, features, row_of, time.perf_counter() - started


def batch_indices(step: int, batch_size: int, size: int, seed: int) -> list[int]:
    """Examples of a step: a fixed seeded permutation per epoch, so a resumed run sees the same data."""
    indices = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, size)
        permutation = _permutation(size, seed + epoch)
        indices.append(permutation[offset])
    return indices


_permutations: dict[tuple[int, int], list[int]] = {}


def _permutation(size: int, seed: int) -> list[int]:
    if (size, seed) not in _permutations:
        _permutations.clear()
        _permutations[(size, seed)] = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return _permutations[(size, seed)]


def latest_checkpoint(out: Path) -> Path | None:
    complete = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / STATE_NAME).is_file())
    return complete[-1] if complete else None


def save_checkpoint(model: PerceptualLM, optimizer, scheduler, step: int, out: Path, keep: int) -> None:
    """A new folder per step, renamed into place when complete: a kill never corrupts the latest."""
    folder = out / "checkpoints" / f"step-{step:07d}"
    scratch = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save(state, scratch / STATE_NAME)
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)
    for old in sorted((out / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def build_optimizer(model: PerceptualLM, options: TrainingOptions) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only: frozen weights get no optimizer state."""
    connector = [p for p in model.connector.parameters() if p.requires_grad]
    prompt = [model.prompt, model.slot_embedding]
    return torch.optim.AdamW([
        {"params": connector, "lr": options.lr, "weight_decay": options.weight_decay},
        {"params": prompt, "lr": options.prompt_lr, "weight_decay": 0.0},
    ])


def train(recipe: Recipe, resume: bool = False, skip_bad: bool = False) -> dict[str, Any]:
    """Train, evaluate on the recipe's eval set, save the adapter; returns the run's summary."""
    options = recipe.training
    out = Path(recipe.out)
    # One process may train several models in turn (comparisons, tests): each run sets its own
    # precision, while the distributed set-up of the process is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision(options.mixed_precision),
                              gradient_accumulation_steps=options.gradient_accumulation)
    set_seed(options.seed)
    recipe.model.training = {k: v for k, v in recipe.to_dict().items() if k != "model"}
    recipe.model.generation = dict(recipe.generation)
    model = PerceptualLM(recipe.model)
    trainable, total = model.parameter_counts()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    # Only examples with a reference can teach (a COCO test-split file lists images without captions).
    labelled = [e for e in read_dataset(recipe.data["train"]) if e.answers]
    examples, features, row_of, cache_seconds = cached_features(model, labelled, options, skip_bad)
    log(f"feature cache: {len(row_of):,} files ready in {cache_seconds:.1f} s")
    if not examples:
        raise ValueError("no usable training examples")

    optimizer = build_optimizer(model, options)
    scheduler = get_cosine_schedule_with_warmup(optimizer, options.warmup_steps, options.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    core: PerceptualLM = accelerator.unwrap_model(model)

    step = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        log(f"no checkpoint in {out / 'checkpoints'}: starting from step 0")
    if checkpoint is not None:
        core.load_adapter_state(load_file(checkpoint / "adapter.safetensors"))
        state = torch.load(checkpoint / STATE_NAME, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        log(f"resumed from {checkpoint} at step {step}")

    quick_eval = _quick_eval_set(recipe, examples if "eval" not in recipe.data else None, options, skip_bad, core)
    started = time.perf_counter()
    model.train()
    progress = tqdm(total=options.max_steps, initial=step, desc="training", unit="step",
                    disable=not accelerator.is_main_process)
    while step < options.max_steps:
        indices = batch_indices(step, options.batch_size, len(examples), options.seed)
        chooser = random.Random(f"{options.seed}-{step}")
        batch = [examples[i] for i in indices]
        with accelerator.accumulate(model):
            loss = model(features[[row_of[e.media] for e in batch]], [e.question for e in batch],
                         [chooser.choice(e.answers) for e in batch])
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(core.trainable_parameters(), options.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}", ex_per_s=f"{_rate(progress, options.batch_size):.1f}")
        if options.eval_every and step % options.eval_every == 0 and quick_eval:
            name, value = _quick_score(core, quick_eval, recipe)
            progress.write(f"step {step}: quick eval {name} {value:.1f}")
            model.train()
        if accelerator.is_main_process and (step % options.checkpoint_every == 0 or step == options.max_steps):
            save_checkpoint(core, optimizer, scheduler, step, out, options.keep_checkpoints)
    progress.close()
    train_seconds = time.perf_counter() - started
    summary = {"trainable_parameters": trainable, "total_parameters": total,
               "feature_cache_seconds": round(cache_seconds, 1), "train_seconds": round(train_seconds, 1)}
    if "eval" in recipe.data:
        summary.update(_final_eval(core, accelerator, recipe, options, skip_bad, out))
    if accelerator.is_main_process:
        core.config.metrics = summary
        core.save_pretrained(out / "adapter")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _rate(progress: tqdm, batch_size: int) -> float:
    elapsed = progress.format_dict.get("elapsed") or 0
    done = progress.n - progress.initial
    return done * batch_size / elapsed if elapsed else 0.0


def _quick_eval_set(recipe, train_examples, options, skip_bad, core):
    """A small fixed sample for periodic evaluation: the eval set's, else held-in training data."""
    if not options.eval_every:
        return None
    spec = dict(recipe.data.get("eval") or {})
    if spec:
        spec["limit"] = min(spec.get("limit") or options.quick_eval_size, options.quick_eval_size)
        examples = read_dataset(spec)
    else:
        examples = random.Random(options.seed).sample(train_examples, min(options.quick_eval_size,
                                                                          len(train_examples)))
    return cached_features(core, examples, options, skip_bad)[:3]


def _quick_score(core, quick_eval, recipe) -> tuple[str, float]:
    examples, features, row_of = quick_eval
    core.eval()
    records = predict_all(core, examples, features, row_of, recipe.eval_batch_size, progress=False)
    return headline(report(core.config.task, records))


def _final_eval(core, accelerator, recipe, options, skip_bad, out) -> dict[str, Any]:
    examples, features, row_of, _ = cached_features(core, read_dataset(recipe.data["eval"]), options, skip_bad)
    core.eval()
    started = time.perf_counter()
    # No autocast: generation re-casting every frozen weight at every token costs more than it saves.
    records = predict_all(core, examples, features, row_of, recipe.eval_batch_size)
    task = core.config.task
    result = report(task, records)
    if accelerator.is_main_process:
        write_predictions(task, records, out / predictions_name(task))
    log(result.format())
    summary = {"eval_seconds": round(time.perf_counter() - started, 1), "eval_questions": len(records),
               "samples": [{k: r[k] for k in ("media", "question", "prediction", "answers")}
                           for r in _spread(records, 6)]}
    if task == "caption":
        summary["caption_scores"] = {k: round(v, 2) for k, v in result.scores.items()}
    else:
        summary["accuracy"] = round(result.overall.accuracy, 2)
        summary["accuracy_per_type"] = {k: round(v.accuracy, 2) for k, v in result.per_type.items()}
    return summary


def _spread(records: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """A few records from across the set (records are ordered by question length)."""
    return records[:: max(1, len(records) // count)][:count]
