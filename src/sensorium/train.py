"""The training loop, on Accelerate: one CPU here, one or many GPUs with `accelerate launch`.

Only the connector, the soft prompt and the slot embedding train. The frozen encoder runs once per
image through the feature cache; every step after that is connector + frozen LM forward/backward.

Under ``accelerate launch`` / ``torchrun`` every process runs this same function (DDP; gloo on
CPUs). ``training.batch_size`` is the global batch of one optimizer step: every process draws the
same step's examples from ``batch_indices`` and takes its own slice of each accumulation micro-step,
so the data order does not depend on the process count, and the loss is weighted so that the update
is the mean over all target tokens of the global batch. Only the main process writes files.
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
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .cache import FeatureCache
from .data import Example, read_dataset
from .evaluate import contexts, headline, predict_all, predictions_name, report, write_predictions
from .lm import load_lm
from .model import PerceptualLM
from .oracle import with_truth
from .recipe import Recipe, TrainingOptions
from .tracking import (
    CURVES_NAME,
    MetricsLog,
    flat_config,
    plot_curves,
    read_metrics,
    selected_trackers,
    tracker_options,
)

STATE_NAME = "training_state.pt"
LM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def log(message: str) -> None:
    """Progress messages from the main process only: N processes would print everything N times."""
    if PartialState().is_main_process:
        print(message, file=sys.stderr, flush=True)


def mixed_precision(choice: str) -> str:
    """'auto' picks bf16 on GPUs that have it and on CPUs with native bf16 matrix instructions."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"


def lm_dtype(choice: str, precision: str, device: torch.device) -> torch.dtype:
    """Weights of the frozen LM. 'auto': the autocast dtype on an accelerator, so a 7B LM takes half
    the memory; float32 on a CPU, where bf16 weights are slow without native bf16 instructions."""
    if choice == "auto":
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        return autocast if autocast is not None and device.type != "cpu" else torch.float32
    if choice not in LM_DTYPES:
        raise ValueError(f"training.lm_dtype: '{choice}' is not one of auto, {', '.join(LM_DTYPES)}")
    return LM_DTYPES[choice]


def cached_features(model: PerceptualLM, examples: list[Example], options: TrainingOptions,
                    skip_bad: bool) -> tuple[list[Example], torch.Tensor, dict[str, int], float]:
    """Features for the examples' media (encoder run only for files not cached yet)."""
    started = time.perf_counter()
    cache = FeatureCache(model.encoder, blocks=model.feature_blocks)
    features, row_of, errors = cache.features([e.media for e in examples], options.cache_batch_size,
                                              options.cache_workers, skip_bad)
    if errors:
        log(f"skipped {len(errors)} unreadable file(s), e.g. {errors[0]}")
    kept = [e for e in examples if e.media in row_of]
    if options.blind or options.oracle:
        features = torch.zeros_like(features)
    return kept, features, row_of, time.perf_counter() - started


def task_examples(spec: dict[str, Any], options: TrainingOptions) -> list[Example]:
    """The examples of a data spec as this run sees them: with their media's content as text for an oracle."""
    examples = read_dataset(spec)
    return with_truth(examples, spec) if options.oracle else examples


def batch_indices(step: int, batch_size: int, size: int, seed: int) -> list[int]:
    """Examples of a step: a fixed seeded permutation per epoch, so a resumed run sees the same data."""
    indices = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, size)
        permutation = _permutation(size, seed + epoch)
        indices.append(permutation[offset])
    return indices


_permutations: dict[tuple[int, int], list[int]] = {}


def process_share(batch: list, micro_step: int, accumulation: int, processes: int, rank: int) -> list:
    """This process's part of one accumulation micro-step: the global batch cut into
    accumulation x processes equal consecutive parts, micro-step by micro-step."""
    size = len(batch) // (accumulation * processes)
    start = (micro_step * processes + rank) * size
    return batch[start:start + size]


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
    prompt = [p for p in (model.prompt, model.slot_embedding) if p is not None]
    return torch.optim.AdamW([
        {"params": connector, "lr": options.lr, "weight_decay": options.weight_decay},
        {"params": prompt, "lr": options.prompt_lr, "weight_decay": 0.0},
    ])


def train(recipe: Recipe, resume: bool = False, skip_bad: bool = False) -> dict[str, Any]:
    """Train, evaluate on the recipe's eval set, save the adapter; returns the run's summary."""
    options = recipe.training
    out = Path(recipe.out)
    accelerator = _accelerator(options, out)
    micro_batch = options.micro_batch_size(accelerator.num_processes)
    set_seed(options.seed)
    recipe.model.training = {k: v for k, v in recipe.to_dict().items() if k != "model"}
    recipe.model.generation = dict(recipe.generation)
    # Weights go straight to this process's device in their final dtype.
    lm, tokenizer = load_lm(recipe.model.lm, lm_dtype(options.lm_dtype, accelerator.mixed_precision,
                                                      accelerator.device), device_map={"": accelerator.device})
    model = PerceptualLM(recipe.model, lm=lm, tokenizer=tokenizer).to(accelerator.device)
    trainable, total = model.parameter_counts()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    if accelerator.num_processes > 1:
        log(f"{accelerator.num_processes} processes, {micro_batch} examples each per micro-step")

    # Only examples with a reference can teach (a COCO test-split file lists images without captions).
    labelled = [e for e in task_examples(recipe.data["train"], options) if e.answers]
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
    metrics = MetricsLog(out, step) if accelerator.is_main_process else None
    accelerator.init_trackers("sensorium", config=flat_config(recipe.to_dict()), init_kwargs=tracker_options(out))
    started = time.perf_counter()
    model.train()
    progress = tqdm(total=options.max_steps, initial=step, desc="training", unit="step",
                    disable=not accelerator.is_main_process)
    while step < options.max_steps:
        indices = batch_indices(step, options.batch_size, len(examples), options.seed)
        chooser = random.Random(f"{options.seed}-{step}")
        batch = [(examples[i], chooser.choice(examples[i].answers)) for i in indices]
        loss = _optimizer_step(accelerator, model, optimizer, scheduler, batch, features, row_of, options)
        step += 1
        progress.update(1)
        if accelerator.is_main_process:  # a disabled bar keeps no timing
            progress.set_postfix(loss=f"{loss:.3f}", ex_per_s=f"{_rate(progress, options.batch_size):.1f}")
        connector_lr, prompt_lr = scheduler.get_last_lr()
        _record(accelerator, metrics, step, {"train/loss": loss, "train/lr": connector_lr,
                                             "train/prompt_lr": prompt_lr})
        if options.eval_every and step % options.eval_every == 0 and quick_eval:
            name, value = _quick_score(core, quick_eval, recipe, accelerator)
            log(f"step {step}: quick eval {name} {value:.1f}")
            _record(accelerator, metrics, step, {f"eval/quick_{name}": value})
            model.train()
        if accelerator.is_main_process and (step % options.checkpoint_every == 0 or step == options.max_steps):
            save_checkpoint(core, optimizer, scheduler, step, out, options.keep_checkpoints)
    progress.close()
    train_seconds = time.perf_counter() - started
    summary = {"trainable_parameters": trainable, "total_parameters": total,
               "feature_cache_seconds": round(cache_seconds, 1), "train_seconds": round(train_seconds, 1)}
    if "eval" in recipe.data:
        result = _final_eval(core, accelerator, recipe, options, skip_bad, out)
        summary.update(result)
        scores = {k: v for k, v in result.items() if isinstance(v, float) and not k.endswith("_seconds")}
        scores.update(result.get("caption_scores", {}))
        _record(accelerator, metrics, step, {f"eval/{k}": v for k, v in scores.items()})
    if accelerator.is_main_process:
        core.config.metrics = summary
        core.save_pretrained(out / "adapter")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_curves(read_metrics(metrics.path), out / CURVES_NAME)
    # Not end_training(): it also tears down the process group, which outlives one run.
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()  # every process returns once the run's files are complete
    return summary


def _accelerator(options: TrainingOptions, out: Path) -> Accelerator:
    """This run's Accelerator: precision, accumulation, trackers; the process group is the launcher's."""
    # One process may train several models in turn (comparisons, tests): each run sets its own
    # precision, while the distributed set-up of the process is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    trackers = selected_trackers(options.trackers)
    accelerator = Accelerator(
        # Without an accelerator, processes started by a launcher join one gloo group on the CPUs.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=mixed_precision(options.mixed_precision),
        gradient_accumulation_steps=options.gradient_accumulation,
        # batch_size is already the global batch: the scheduler steps once per optimizer step.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")),
    )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # Saving the adapter and generating during evaluation would need the sharded weights gathered.
        raise ValueError(f"{accelerator.distributed_type.value}: sharded training is not supported yet; "
                         "use DDP (a bf16 frozen LM of 7B fits one 24 GB GPU), see README 'Scaling'")
    return accelerator


def _optimizer_step(accelerator: Accelerator, model, optimizer, scheduler, batch: list[tuple[Example, str]],
                    features: torch.Tensor, row_of: dict[str, int], options: TrainingOptions) -> float:
    """One optimizer step on the global batch; returns its mean loss over all its target tokens."""
    core: PerceptualLM = accelerator.unwrap_model(model)
    processes, accumulation = accelerator.num_processes, options.gradient_accumulation
    batch_tokens = _target_tokens(core, batch)
    loss_sum = torch.zeros((), device=accelerator.device)
    for micro_step in range(accumulation):
        share = process_share(batch, micro_step, accumulation, processes, accelerator.process_index)
        share_tokens = _target_tokens(core, share)
        with accelerator.accumulate(model):
            loss = model(features[[row_of[e.media] for e, _ in share]], [e.question for e, _ in share],
                         [answer for _, answer in share], contexts([e for e, _ in share]))
            # The model's loss is the mean over this share's target tokens. DDP averages gradients over
            # the processes and Accelerate divides by the accumulation steps; weighting by the share's
            # part of the batch's tokens makes the update the mean over every target token of the batch
            # (exactly 1 for one process without accumulation).
            accelerator.backward(loss * (share_tokens * processes * accumulation / batch_tokens))
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(core.trainable_parameters(), options.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach().float() * share_tokens
    return accelerator.reduce(loss_sum, "sum").item() / batch_tokens


def _target_tokens(core: PerceptualLM, batch: list[tuple[Example, str]]) -> int:
    return sum(len(ids) for ids in core.target_ids([answer for _, answer in batch]))


def _record(accelerator: Accelerator, metrics: MetricsLog | None, step: int, values: dict[str, float]) -> None:
    """To the trackers and to metrics.jsonl (main process)."""
    accelerator.log(values, step=step)
    if metrics is not None:
        metrics.write(step, values)


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
        examples = task_examples(spec, options)
    else:
        examples = random.Random(options.seed).sample(train_examples, min(options.quick_eval_size,
                                                                          len(train_examples)))
    return cached_features(core, examples, options, skip_bad)[:3]


def _quick_score(core, quick_eval, recipe, accelerator) -> tuple[str, float]:
    examples, features, row_of = quick_eval
    core.eval()
    records = _answer_sharded(accelerator, core, examples, features, row_of, recipe, progress=False)
    return headline(report(core.config.task, records))


def _final_eval(core, accelerator, recipe, options, skip_bad, out) -> dict[str, Any]:
    examples, features, row_of, _ = cached_features(core, task_examples(recipe.data["eval"], options), options,
                                                    skip_bad)
    core.eval()
    started = time.perf_counter()
    # No autocast: generation re-casting every frozen weight at every token costs more than it saves.
    records = _answer_sharded(accelerator, core, examples, features, row_of, recipe,
                             progress=accelerator.is_main_process)
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


def _answer_sharded(accelerator, core, examples, features, row_of, recipe, progress: bool) -> list[dict[str, Any]]:
    """Every process answers one consecutive share of the examples; every process gets all records.

    predict_all orders records by question length, stably; re-sorting the shares, concatenated in
    process order, by the same key gives exactly the single-process order.
    """
    with accelerator.split_between_processes(examples) as share:
        records = predict_all(core, share, features, row_of, recipe.eval_batch_size, progress=progress)
    return sorted(gather_object(records), key=lambda record: len(record["question"]))


def _spread(records: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """A few records from across the set (records are ordered by question length)."""
    return records[:: max(1, len(records) // count)][:count]
