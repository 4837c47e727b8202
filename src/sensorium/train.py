"""The training loop, on Accelerate: one CPU here, one or many GPUs with `accelerate launch`.

Only the connector, the soft prompt and the slot embedding train. The frozen encoder runs once per
image through the feature cache; every step after that is connector + frozen LM forward/backward.

Under ``accelerate launch`` / ``torchrun`` every process runs this same function (DDP; gloo on
CPUs), or with Accelerate's FSDP config the frozen LM sharded across the processes (``sharding``: FSDP2, the adapter
replicated). ``training.batch_size`` is the global batch of one optimizer step: every process draws the
same step's examples from ``batch_indices`` and takes its own slice of each accumulation micro-step,
so the data order does not depend on the process count, and the loss is weighted so that the update
is the mean over all target tokens of the global batch. Only the main process writes files.

One run folder (``--out``) holds one run: the main process locks it for the run's duration, a run
without ``--resume`` starts a finished run's folder over (an unfinished run's only with ``--restart``), and a
checkpoint resumes only the recipe that wrote it (see ``recipe_fingerprint``); a damaged checkpoint is passed
over for the newest intact one.

A failed run loses nothing: the earlier run's checkpoints and metrics are replaced only once this run has
loaded its models and data and is about to take its first step, and the trained adapter is written as soon
as the last step is taken, before the final evaluation, which may still fail. It is written with the statistics
of its training questions (``routing``), by which a composition routes a question to the sense trained on its
like.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    ProjectConfiguration,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .config import WEIGHTS_NAME
from .data import Example, read_dataset
from .errors import BadInputError
from .evaluate import (
    by_task,
    contexts,
    eval_batches,
    has_references,
    headline,
    predict_all,
    predictions_name,
    report,
    write_predictions,
)
from .lm import cpu_has_native_bf16, load_lm
from .model import PerceptualLM, PrefixedLM, build_model
from .oracle import with_truth
from .recipe import Recipe, TrainingOptions
from .routing import question_stats
from .sharding import average_gradients, is_sharded, requested_sharding, shard_frozen_lm, sharded_parameter_count
from .tracking import (
    CURVES_NAME,
    METRICS_NAME,
    MetricsLog,
    flat_config,
    plot_curves,
    read_metrics,
    selected_trackers,
    tracker_options,
)
from .trained import ADAPTER_FOLDER, Ingredient, layout_differences, read_ingredient

STATE_NAME = "training_state.pt"
# The files a run writes at the top of its folder, besides checkpoints/ and the adapter.
RUN_FILES = ("summary.json", METRICS_NAME, predictions_name("vqa"), predictions_name("caption"), CURVES_NAME)
LOCK_NAME = ".sensorium.lock"  # the run folder's lock; the holder's process id is in LOCK_NAME + ".pid"
# Recipe keys that do not change the trained weights, only where the run writes, what it records along the
# way, how fast it encodes and how the final evaluation decodes: a run may resume under other values of these
# (a run whose evaluation failed on its decoding options resumes with corrected ones). model.training,
# .generation and .metrics are copies the run itself writes into the adapter's config.
BOOKKEEPING = ("out", "eval_batch_size", "generation", "training.trackers", "training.checkpoint_every",
               "training.keep_checkpoints", "training.eval_every", "training.quick_eval_size",
               "training.cache_batch_size", "training.cache_workers", "model.training", "model.generation",
               "model.metrics")
# What a file that is not a checkpoint makes torch.load and safetensors raise.
UNREADABLE = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, SafetensorError)
LM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Examples ready to answer: those whose media could be read, the media's features, each media file's row.
EncodedExamples = tuple[list[Example], torch.Tensor, dict[str, int]]


logger = logging.getLogger(__name__)


def log(message: str) -> None:
    """Progress messages from the main process only: N processes would print everything N times."""
    if PartialState().is_main_process:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning, from the main process only."""
    if PartialState().is_main_process:
        logger.warning(message)


def mixed_precision(choice: str) -> str:
    """'auto' picks bf16 on GPUs that have it and on CPUs with native bf16 matrix instructions."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


def lm_dtype(choice: str, precision: str, device: torch.device) -> torch.dtype:
    """Weights of the frozen LM. 'auto': the autocast dtype on an accelerator, so a 7B LM takes half
    the memory; float32 on a CPU, where bf16 weights are slow without native bf16 instructions."""
    if choice == "auto":
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        return autocast if autocast is not None and device.type != "cpu" else torch.float32
    if choice not in LM_DTYPES:
        raise ValueError(f"training.lm_dtype: '{choice}' is not one of auto, {', '.join(LM_DTYPES)}")
    return LM_DTYPES[choice]


def cached_features(model: PrefixedLM, examples: list[Example], options: TrainingOptions,
                    skip_bad: bool) -> tuple[list[Example], torch.Tensor, dict[str, int], float]:
    """Features for the examples' media (encoder run only for files not cached yet)."""
    started = time.perf_counter()
    features, row_of, errors = model.features_of([e.media for e in examples], options.cache_batch_size,
                                                 options.cache_workers, skip_bad)
    if errors:
        log(f"skipped {len(errors)} unreadable file(s), e.g. {errors[0]}")
    kept = [e for e in examples if e.media in row_of]
    if options.blind or options.oracle:
        features = torch.zeros_like(features)
    return kept, features, row_of, time.perf_counter() - started


def task_examples(spec: dict[str, Any] | list[dict[str, Any]], options: TrainingOptions) -> list[Example]:
    """The examples of a data spec (or of a list of them, one set after another) as this run sees them: with
    their media's content as text for an oracle."""
    if isinstance(spec, list):  # a multitask recipe's sets, pooled for training and scored set by set
        if not spec:
            raise ValueError("an empty list of data specs")
        return [example for part in spec for example in task_examples(part, options)]
    examples = read_dataset(spec)
    return with_truth(examples) if options.oracle else examples


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


def recipe_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """The recipe as flat ``section.key`` values, bookkeeping left out (see BOOKKEEPING).

    What remains decides the trained weights and what they are scored on: the model, the data (training
    and evaluation sets) and every training option that changes an update (steps, batch, learning rates,
    schedule, precision, seed, blind...). A checkpoint stores it, and
    ``--resume`` refuses a checkpoint whose recipe differs.
    """
    return {key: value for key, value in flat_config(recipe.to_dict()).items()
            if not any(key == skip or key.startswith(skip + ".") for skip in BOOKKEEPING)}


def checkpoint_steps(out: Path) -> dict[int, Path]:
    """The run folder's complete checkpoints (renamed into place) by step number."""
    steps = {}
    for folder in (out / "checkpoints").glob("step-*"):
        number = folder.name.removeprefix("step-")
        if number.isdigit():
            steps[int(number)] = folder
    return steps


def save_checkpoint(model: PerceptualLM, optimizer, scheduler, step: int, out: Path, keep: int,
                    fingerprint: dict[str, Any], metrics_records: int) -> None:
    """A new folder per step, renamed into place when complete: a kill never corrupts the latest.

    The state holds the recipe's fingerprint and how many metrics records the run had written, so a
    resumed run checks its recipe and restores metrics.jsonl to exactly this moment.
    """
    folder = out / "checkpoints" / f"step-{step:07d}"
    scratch = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "recipe": fingerprint, "metrics_records": metrics_records}
    torch.save(state, scratch / STATE_NAME)
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)
    prune_checkpoints(out, step, keep)


def prune_checkpoints(out: Path, step: int, keep: int) -> None:
    """Keep the ``keep`` checkpoints of the highest steps up to ``step``, by number. Checkpoints after
    ``step`` are stale: this run resumed before them because they were damaged."""
    steps = checkpoint_steps(out)
    kept = sorted(s for s in steps if s <= step)[-keep:]
    for number, folder in steps.items():
        if number not in kept:
            shutil.rmtree(folder, ignore_errors=True)


def _first_line(error: BaseException) -> str:
    """The gist of a loader's error: torch's run on for several sentences and lines."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]


def read_state(folder: Path, step: int) -> dict[str, Any]:
    """A checkpoint's training state, checked to be whole; BadInputError says what is wrong with it."""
    try:
        state = torch.load(folder / STATE_NAME, weights_only=True)
    except UNREADABLE as error:
        raise BadInputError(f"{folder / STATE_NAME}: unreadable ({_first_line(error)})") from error
    types = {"step": int, "optimizer": dict, "scheduler": dict}
    state = state if isinstance(state, dict) else {}
    missing = [key for key, expected in types.items() if not isinstance(state.get(key), expected)]
    if missing:
        raise BadInputError(f"{folder / STATE_NAME}: no valid {', '.join(missing)}")
    if state["step"] != step:
        raise BadInputError(f"{folder / STATE_NAME}: holds step {state['step']}, not {step}")
    return state


def _check_optimizer_state(saved: dict[str, Any], optimizer, source: Path) -> None:
    """Saved moments must have their parameter's shape: load_state_dict would take them, the next step fail."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or sum(len(g.get("params", ())) for g in groups) != len(params):
        raise BadInputError(f"{source}: optimizer state does not match the trainable parameters")
    for index, values in saved.get("state", {}).items():
        for name, value in values.items():
            if torch.is_tensor(value) and value.dim() and value.shape != params[index].shape:
                raise BadInputError(f"{source}: optimizer state '{name}' of parameter {index} has shape "
                                    f"{list(value.shape)}, not {list(params[index].shape)}")


class OtherRecipe(BadInputError):
    """A checkpoint written by a different recipe: never resumed, never passed over."""


def _check_recipe(folder: Path, state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Refuse to continue another recipe's run, naming the keys that differ."""
    saved = state.get("recipe")
    if saved is None:
        warn(f"{folder}: written before checkpoints recorded their recipe; resuming without checking it")
        return
    differ = sorted(key for key in saved.keys() | fingerprint.keys() if saved.get(key) != fingerprint.get(key))
    if differ:
        changes = "; ".join(f"{key}: {saved.get(key)!r} -> {fingerprint.get(key)!r}" for key in differ)
        raise OtherRecipe(f"{folder}: a checkpoint of a different recipe ({changes}); resume with the recipe "
                            "that wrote it, or train with --restart instead of --resume to start over")


def resume_from_checkpoint(core: PerceptualLM, optimizer, scheduler, out: Path,
                           fingerprint: dict[str, Any]) -> tuple[int, int | None]:
    """Load the newest intact checkpoint of this recipe; (its step, metrics records then), or (0, None).

    A damaged checkpoint (unreadable or incomplete state or adapter, tensors of the wrong shape) is
    passed over with a warning for the one before it; nothing is loaded until one passes every check.
    """
    for step, folder in sorted(checkpoint_steps(out).items(), reverse=True):
        try:
            state = read_state(folder, step)
            _check_recipe(folder, state, fingerprint)
            adapter = _read_adapter(folder)
            core.check_adapter_state(adapter, folder / WEIGHTS_NAME)
            _check_optimizer_state(state["optimizer"], optimizer, folder / STATE_NAME)
            optimizer.load_state_dict(state["optimizer"])
        except OtherRecipe:
            raise
        except BadInputError as error:
            warn(f"{error}: checkpoint passed over, trying the one before it")
            continue
        scheduler.load_state_dict(state["scheduler"])
        core.load_adapter_state(adapter, folder / WEIGHTS_NAME)
        log(f"resumed from {folder} at step {step}")
        return step, state.get("metrics_records")
    log(f"no intact checkpoint in {out / 'checkpoints'}: starting from step 0")
    return 0, None


def _read_adapter(folder: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(folder / WEIGHTS_NAME)
    except UNREADABLE as error:
        raise BadInputError(f"{folder / WEIGHTS_NAME}: unreadable ({_first_line(error)})") from error


def start_over(out: Path) -> None:
    """A run without --resume replaces the folder's run, checkpoints included, with a warning; called once
    the run has loaded and checked everything it needs, so that a recipe that fails loses nothing.

    Not refused: a fresh run already replaces the folder's adapter, metrics.jsonl and summary, and
    re-running a command (``make demo``, ``compare`` after an interruption) must keep working. Kept,
    the earlier run's checkpoints would be pruned against this run's and resumed by a later --resume.
    """
    steps = checkpoint_steps(out)
    if steps:
        warn(f"{out / 'checkpoints'}: removing {len(steps)} checkpoint(s) of an earlier run (up to step "
             f"{max(steps)}); this run starts over (--resume continues a run instead)")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """One training at a time in a run folder: two would interleave metrics.jsonl and overwrite each
    other's checkpoints. The lock (an OS file lock) goes with the process, even on kill -9; the holder's
    process id and host sit beside it, for the message the second run gets."""
    out.mkdir(parents=True, exist_ok=True)
    lock, holder = FileLock(out / LOCK_NAME), out / f"{LOCK_NAME}.pid"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder.read_text().strip() if holder.is_file() else ""
        raise BadInputError(f"{out}: another training is using this folder ({who or 'process id not written yet'}); "
                            "wait for it to finish or choose another --out") from None
    try:
        holder.write_text(f"process {os.getpid()} on {socket.gethostname()}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _main_first(accelerator: Accelerator, action: Callable[[], Any]) -> None:
    """Run ``action`` on the main process; when it fails with a user error every process raises it,
    so none is left waiting for a main process that stopped."""
    error = None
    if accelerator.is_main_process:
        try:
            action()
        except BadInputError as caught:
            error = str(caught)
    [error] = broadcast_object_list([error])
    if error is not None:
        raise BadInputError(error)


def build_optimizer(senses: PerceptualLM | list[PerceptualLM], options: TrainingOptions) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only (of one adapter, or of every sense of a composed model): frozen
    weights get no optimizer state."""
    senses = senses if isinstance(senses, list) else [senses]
    connector = [p for sense in senses for p in sense.connector.parameters() if p.requires_grad]
    prompt = [p for sense in senses for p in (sense.prompt, sense.slot_embedding) if p is not None]
    return torch.optim.AdamW([
        {"params": connector, "lr": options.lr, "weight_decay": options.weight_decay},
        {"params": prompt, "lr": options.prompt_lr, "weight_decay": 0.0},
    ])


def unfinished_run(out: Path) -> int | None:
    """The last checkpoint's step of a run that stopped before its result (a crash, an interruption): checkpoints
    newer than the folder's summary.json, or with none. None when the folder holds no such run."""
    steps = checkpoint_steps(out)
    if not steps:
        return None
    summary = out / "summary.json"
    last = max(steps)
    finished = summary.is_file() and summary.stat().st_mtime >= steps[last].stat().st_mtime
    return None if finished else last


def train(recipe: Recipe, resume: bool = False, skip_bad: bool = False, restart: bool = False) -> dict[str, Any]:
    """Train, evaluate on the recipe's eval set, save the adapter; returns the run's summary.

    A fresh run (neither ``resume`` nor ``restart``) into a folder holding an unfinished run is refused before
    anything loads: its checkpoints are the only copy of that run's training, and forgetting --resume after a
    crash must not remove them. A finished run's folder is started over, as re-running a command does."""
    out = Path(recipe.out)
    step = unfinished_run(out)
    if step is not None and not (resume or restart):
        raise BadInputError(f"{out}: holds an unfinished run (checkpoints up to step {step}, no result after them): "
                            "--resume continues it, --restart starts over and removes its checkpoints")
    accelerator = _accelerator(recipe.training, out)
    with ExitStack() as held:
        _main_first(accelerator, lambda: held.enter_context(run_lock(out)))
        return _train(recipe, accelerator, out, resume, skip_bad)


def _train(recipe: Recipe, accelerator: Accelerator, out: Path, resume: bool, skip_bad: bool) -> dict[str, Any]:
    options = recipe.training
    fingerprint = recipe_fingerprint(recipe)
    micro_batch = options.micro_batch_size(accelerator.num_processes)
    set_seed(options.seed)
    recipe.model.training = {k: v for k, v in recipe.to_dict().items() if k != "model"}  # see recorded_recipe
    recipe.model.generation = dict(recipe.generation)
    model = _built_model(recipe, accelerator)
    if options.init_from is not None:
        start_from(model, options.init_from)
    trainable, total = model.parameter_counts()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    if accelerator.num_processes > 1:
        log(f"{accelerator.num_processes} processes, {micro_batch} examples each per micro-step")

    # Only examples with a reference can teach (a COCO test-split file lists images without captions).
    labelled = [e for e in task_examples(recipe.data["train"], options) if e.answers]
    foreign = [task for task in by_task(labelled) if not recipe.model.does(task)]
    if foreign:
        raise ValueError(f"data.train holds {foreign[0]} examples, which a {recipe.model.task} adapter does not "
                         "learn (model.task: multitask learns questions and captions together)")
    examples, features, row_of, cache_seconds = cached_features(model, labelled, options, skip_bad)
    log(f"feature cache: {len(row_of):,} files ready in {cache_seconds:.1f} s")
    if not examples:
        raise ValueError("no usable training examples")

    optimizer = build_optimizer(model, options)
    scheduler = get_cosine_schedule_with_warmup(optimizer, options.warmup_steps, options.max_steps)
    if is_sharded(model.lm):
        # Not DDP, not Accelerate's FSDP of the whole model: the adapter stays whole on every process and
        # _optimizer_step averages its gradients. prepare_model in evaluation mode applies mixed precision only.
        model = accelerator.prepare_model(model, device_placement=False, evaluation_mode=True)
        optimizer, scheduler = accelerator.prepare_optimizer(optimizer), accelerator.prepare_scheduler(scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    core: PerceptualLM = accelerator.unwrap_model(model)

    quick_eval = _quick_eval_set(recipe, examples if "eval" not in recipe.data else None, options, skip_bad, core)
    final_eval = _encoded(core, task_examples(recipe.data["eval"], options), options, skip_bad) \
        if "eval" in recipe.data else None
    step, records = resume_from_checkpoint(core, optimizer, scheduler, out, fingerprint) if resume else (0, None)
    if not resume and accelerator.is_main_process:
        start_over(out)
    metrics = MetricsLog(out, step if resume else None, records) if accelerator.is_main_process else None
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
            save_checkpoint(core, optimizer, scheduler, step, out, options.keep_checkpoints, fingerprint,
                            metrics.records)
    progress.close()
    train_seconds = time.perf_counter() - started
    summary = {"trainable_parameters": trainable, "total_parameters": total,
               "feature_cache_seconds": round(cache_seconds, 1), "train_seconds": round(train_seconds, 1)}
    model.eval()
    # On every process, since a sharded LM's forward needs them all: what the adapter was asked, for routing.
    core.questions = question_stats(core.lm, core.tokenizer, [e.question for e in examples], options.seed)
    if accelerator.is_main_process:  # the run's result, before an evaluation that may fail
        core.save_pretrained(out / ADAPTER_FOLDER)
    if final_eval is not None:
        result = _final_eval(core, accelerator, recipe, final_eval, out)
        summary.update(result)
        scores = {k: v for k, v in result.items() if isinstance(v, float) and not k.endswith("_seconds")}
        scores.update(result.get("caption_scores", {}))
        _record(accelerator, metrics, step, {f"eval/{k}": v for k, v in scores.items()})
    if accelerator.is_main_process:
        core.config.metrics = summary
        core.config.save(out / ADAPTER_FOLDER)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_curves(read_metrics(metrics.path), out / CURVES_NAME)
    # Not end_training(): it also tears down the process group, which outlives one run.
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()  # every process returns once the run's files are complete
    return summary


def _built_model(recipe: Recipe, accelerator: Accelerator) -> PerceptualLM:
    """The recipe's model on this process's device, its frozen LM whole, or sharded when the launcher asked for FSDP."""
    dtype = lm_dtype(recipe.training.lm_dtype, accelerator.mixed_precision, accelerator.device)
    sharding = requested_sharding() if accelerator.num_processes > 1 else None  # one process: nothing to shard
    if sharding is None:  # weights go straight to this process's device in their final dtype
        lm, tokenizer = load_lm(recipe.model.lm, dtype, device_map={"": accelerator.device})
        return build_model(recipe.model, lm=lm, tokenizer=tokenizer).to(accelerator.device)
    # Built whole on the CPU (the paper layout may add an embedding row), then each process keeps its shard of the
    # LM on its device, and the rest of the model goes there too.
    lm, tokenizer = load_lm(recipe.model.lm, dtype)
    model = build_model(recipe.model, lm=lm, tokenizer=tokenizer)
    shard_frozen_lm(model.lm, sharding, accelerator.device)
    for child in model.children():
        if child is not model.lm:
            child.to(accelerator.device)
    for parameter in model.parameters(recurse=False):
        parameter.data = parameter.data.to(accelerator.device)
    held, total = sharded_parameter_count(model.lm), sum(p.numel() for p in model.lm.parameters())
    log(f"frozen LM sharded over {accelerator.num_processes} processes (FSDP2): {held:,} of its {total:,} "
        "parameters on each")
    return model


def start_from(model: PerceptualLM, adapter: str) -> None:
    """``training.init_from``: the run starts from a trained adapter's tensors, not from the seed's draw. Runs
    fine-tuned from one adapter stay near it, where averaging them (a model soup) keeps what each learned;
    adapters started apart do not average. The adapter must have the recipe's layout, as a merge would need."""
    start = read_ingredient(adapter)
    problems = layout_differences([start, Ingredient(Path("this recipe"), model.config, model.adapter_state())])
    if problems:
        raise BadInputError(f"training.init_from={adapter}: not this recipe's layout: " + "; ".join(problems))
    model.load_adapter_state(start.state, start.folder / WEIGHTS_NAME)
    log(f"starting from the adapter in {start.folder}")


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
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("DeepSpeed is not supported: to shard the frozen LM, launch with Accelerate's FSDP config "
                         "(recipes/accelerate/fsdp-frozen-lm.yaml), see docs/training.md, 'Multi-GPU and scaling'")
    return accelerator


def _optimizer_step(accelerator: Accelerator, model, optimizer, scheduler, batch: list[tuple[Example, str]],
                    features: torch.Tensor, row_of: dict[str, int], options: TrainingOptions) -> float:
    """One optimizer step on the global batch; returns its mean loss over all its loss units."""
    core: PerceptualLM = accelerator.unwrap_model(model)
    processes, accumulation = accelerator.num_processes, options.gradient_accumulation
    batch_units = _loss_units(core, batch)
    loss_sum = torch.zeros((), device=accelerator.device)
    # DDP's gradient sync is held back between accumulation micro-steps; over a sharded LM the adapter's gradients
    # are averaged by average_gradients at the last micro-step, and Accelerate has no model of its own to hold back.
    synced = [] if is_sharded(core.lm) else [model]
    for micro_step in range(accumulation):
        share = process_share(batch, micro_step, accumulation, processes, accelerator.process_index)
        share_units = _loss_units(core, share)
        with accelerator.accumulate(*synced):
            loss = model(features[[row_of[e.media] for e, _ in share]], [e.question for e, _ in share],
                         [answer for _, answer in share], contexts([e for e, _ in share]))
            # The model's loss is the mean over this share's loss units (target tokens, or samples). DDP
            # averages gradients over the processes and Accelerate divides by the accumulation steps;
            # weighting by the share's part of the batch's units makes the update the mean over every unit
            # of the batch (exactly 1 for one process without accumulation).
            accelerator.backward(loss * (share_units * processes * accumulation / batch_units))
            if accelerator.sync_gradients:
                if is_sharded(core.lm):
                    average_gradients(core.trainable_parameters())
                accelerator.clip_grad_norm_(core.trainable_parameters(), options.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach().float() * share_units
    return accelerator.reduce(loss_sum, "sum").item() / batch_units


def _loss_units(core: PerceptualLM, batch: list[tuple[Example, str]]) -> int:
    """What the model's loss averages over in ``batch``: target tokens, or samples (``PerceptualLM.loss_units``)."""
    return core.loss_units([e.question for e, _ in batch], [answer for _, answer in batch])


def _record(accelerator: Accelerator, metrics: MetricsLog | None, step: int, values: dict[str, float]) -> None:
    """To the trackers and to metrics.jsonl (main process)."""
    accelerator.log(values, step=step)
    if metrics is not None:
        metrics.write(step, values)


def _rate(progress: tqdm, batch_size: int) -> float:
    elapsed = progress.format_dict.get("elapsed") or 0
    done = progress.n - progress.initial
    return done * batch_size / elapsed if elapsed else 0.0


def _quick_eval_set(recipe: Recipe, train_examples: list[Example] | None, options: TrainingOptions, skip_bad: bool,
                    core: PerceptualLM) -> EncodedExamples | None:
    """A small fixed sample for periodic evaluation: the eval set's, else held-in training data; None without one,
    or when the sample has no references to score against."""
    if not options.eval_every:
        return None
    spec = recipe.data.get("eval")
    if spec:
        parts = spec if isinstance(spec, list) else [spec]
        size = max(1, options.quick_eval_size // len(parts))  # each set of a multitask eval equally
        examples = task_examples([{**part, "limit": min(part.get("limit") or size, size)} for part in parts], options)
    else:
        examples = random.Random(options.seed).sample(train_examples, min(options.quick_eval_size,
                                                                          len(train_examples)))
    if not any(example.answers for example in examples):  # nothing to score: no quick evaluation
        return None
    return _encoded(core, examples, options, skip_bad)


def _encoded(core: PerceptualLM, examples: list[Example], options: TrainingOptions, skip_bad: bool) -> EncodedExamples:
    """Examples ready to answer, their media read and encoded now: an evaluation set is read before the run's
    first step, so that a missing or unreadable file fails the run before it has replaced anything."""
    return cached_features(core, examples, options, skip_bad)[:3]


def _quick_score(core: PerceptualLM, quick_eval: EncodedExamples, recipe: Recipe,
                 accelerator: Accelerator) -> tuple[str, float]:
    examples, features, row_of = quick_eval
    core.eval()
    records = _answer_sharded(accelerator, core, examples, features, row_of, recipe, progress=False)
    task, first = next(iter(by_task(records).items()))  # a multitask run logs the task of its first record
    return headline(report(task, first))


def _final_eval(core: PerceptualLM, accelerator: Accelerator, recipe: Recipe, eval_set: EncodedExamples,
                out: Path) -> dict[str, Any]:
    examples, features, row_of = eval_set
    core.eval()
    started = time.perf_counter()
    # No autocast: generation re-casting every frozen weight at every token costs more than it saves.
    records = _answer_sharded(accelerator, core, examples, features, row_of, recipe,
                             progress=accelerator.is_main_process)
    summary: dict[str, Any] = {"eval_seconds": round(time.perf_counter() - started, 1),
                               "eval_questions": len(records),
                               "samples": [{k: r[k] for k in ("media", "question", "prediction", "answers")}
                                           for r in sample_records(records, 6)]}
    for task, task_records in by_task(records).items():  # one task, or a multitask run's two
        if accelerator.is_main_process:
            write_predictions(task, task_records, out / predictions_name(task))
        if not has_references(task_records):
            log(f"data.eval: no {task} references to score against (predictions only)")
            continue
        result = report(task, task_records)
        log(result.format())
        if task == "caption":
            summary["caption_scores"] = {k: round(v, 2) for k, v in result.scores.items()}
        else:
            summary["accuracy"] = round(result.overall.accuracy, 2)
            summary["accuracy_per_type"] = {k: round(v.accuracy, 2) for k, v in result.per_type.items()}
    return summary


def _answer_sharded(accelerator: Accelerator, core: PerceptualLM, examples: list[Example], features: torch.Tensor,
                    row_of: dict[str, int], recipe: Recipe, progress: bool) -> list[dict[str, Any]]:
    """Every process answers one consecutive share of the examples; every process gets all records.

    predict_all orders records by question length, stably; re-sorting the shares, concatenated in
    process order, by the same key gives exactly the single-process order.

    Over a sharded LM every forward is a collective of all processes, so they step together: each decodes with
    ``synced_gpus`` (one whose answers are complete keeps stepping until every process's are), and one with fewer
    batches than another then answers the set's first example again, its answer dropped, once per missing batch.
    """
    lockstep = is_sharded(core.lm)
    generation = {"synced_gpus": True} if lockstep else None
    with accelerator.split_between_processes(examples) as share:
        missing = 0
        if lockstep:  # counted before any forward, so that the collectives stay in order
            own = len(eval_batches(share, recipe.eval_batch_size))
            missing = max(gather_object([own])) - own
        records = predict_all(core, share, features, row_of, recipe.eval_batch_size, generation, progress)
        for _ in range(missing):
            predict_all(core, examples[:1], features, row_of, 1, generation, progress=False)
    return sorted(gather_object(records), key=lambda record: len(record["question"]))


def sample_records(records: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """A few records to show: the first of each answer type, in the order the types first come, then records from
    across the set (ordered by question length) up to ``count``. Right and wrong answers come as they come: a
    sample chosen for being wrong, or for being right, would say nothing of the model."""
    first_of_type: dict[Any, dict[str, Any]] = {}
    for record in records:
        first_of_type.setdefault(record["answer_type"], record)
    picked = list(first_of_type.values())[:count]
    for record in records[:: max(1, len(records) // count)]:
        if len(picked) == count:
            break
        if all(record is not other for other in picked):
            picked.append(record)
    return picked
