"""The eP-ALM authors' adaptation checkpoints (mshukor/eP-ALM) as adapters of ``layout: paper``.

Their training script (accelerate_training/vqa.py) saves ``{'model': ..., 'optimizer': ..., 'lr_scheduler': ...,
'config': ..., 'epoch': ..., ...}`` with ``torch.save``; ``model`` holds the trained tensors only, the frozen LM and
encoder filtered out: one linear layer per encoder block, ``connector.{i}.weight`` [LM width, encoder width] and
``.bias`` (only ``connector.0`` with ``shared_connector``), and the soft prompt, an embedding
``prompt_module.prefix_embedding.0.weight`` [prompt length, embedding width], followed when ``mlp`` is on by
Linear (``.1``), Tanh and Linear (``.3``) (models/epalm.py, models/connector.py). The LM and the encoder are the
script's arguments (``--text_model``, ``--vision_model``), not in its config: the user names them.

A checkpoint is a pickle, so it is read with ``torch.load(weights_only=True)``, which builds tensors and plain
values and refuses anything else; every key and shape is checked before a tensor is copied.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import ConfigDict, StrictBool
from pydantic.dataclasses import dataclass

from .config import PAPER_TEMPLATES, AdapterConfig
from .errors import BadInputError
from .files import regular_file
from .lm import load_lm
from .model import PerceptualLM, build_model, check_tensor
from .recipe import read_yaml
from .safe_load import refusal_reason
from .schema import Count, NonNegative, build

DEFAULT_LM = "facebook/opt-2.7b"  # the LM of the released ePALM checkpoints (run_scripts/.../image/ePALM_vqa.sh)
# The official script's --vision_model default is timm's vit_base_patch16_224; the default here is the Hugging Face
# ViT-B/16 of the same architecture, but not the same weights (timm's are the AugReg in21k -> in1k training, whose
# [CLS] tokens the released connectors were trained on): an encoder holding those weights is named with --encoder.
OFFICIAL_VISION_MODEL = "vit_base_patch16_224"
DEFAULT_ENCODER = "google/vit-base-patch16-224"
# A released checkpoint holds the trained tensors (tens of MB) and their AdamW moments, twice as much again:
# about 300 MB for OPT-2.7B with one linear per block and the prompt MLP, under 1 GB for OPT-6.7B. Anything
# far larger is not one, and is refused before torch reads it into memory.
MAX_CHECKPOINT_BYTES = 2 * 2**30
MAX_CONFIG_BYTES = 2**20  # the official configs are about 1 KB
# Official options this import does not reproduce: the official code's default (read when the key is absent),
# the one value accepted, and what another value would need.
UNSUPPORTED: dict[str, tuple[Any, Any, str]] = {
    "prompt_tuning": (False, True, "an adapter without a soft prompt"),
    "deep": (False, False, "a soft prompt at every LM layer"),
    "use_adapters": (False, False, "adapter layers inside the LM"),
    "connector_type": ("linear", "linear", "a connector other than linear layers"),
    "text_step": (1, 1, "injection into every text_step-th layer only"),
    "select_higher_step": (False, False, "a text_step raised to the injection step"),
    "special_eo_answer_token": (None, None, "an end-of-answer token other than EOS"),
    "do_sample": (False, False, "sampled decoding"),
}


@dataclass(config=ConfigDict(extra="forbid"))
class OfficialConfig:
    """The keys of an official config that decide the adapter, with the official code's defaults; its other keys
    (optimiser, schedule, data, batch sizes) do not change what the tensors compute and are ignored."""

    start_layer_idx: NonNegative  # no default: the official 0..0 injects nowhere
    end_layer_idx: Count
    injected_hidden_states: Count = 1
    shared_connector: StrictBool | None = None
    prompt_len: Count = 10
    mlp: StrictBool = True
    special_answer_token: str | None = None
    num_beams: Count = 1
    vision_model_name: str = OFFICIAL_VISION_MODEL

    def __post_init__(self) -> None:
        if self.end_layer_idx <= self.start_layer_idx:
            raise ValueError(f"end_layer_idx ({self.end_layer_idx}) must be above start_layer_idx "
                             f"({self.start_layer_idx}): the injection layers are start..end-1")


OFFICIAL_KEYS = tuple(spec.name for spec in dataclasses.fields(OfficialConfig))


def read_official_config(path: Path) -> tuple[OfficialConfig, dict[str, Any]]:
    """The official config's deciding keys, and the whole mapping; one line naming the file for any problem."""
    values = read_yaml(regular_file(path, MAX_CONFIG_BYTES))
    if not isinstance(values, dict):
        raise BadInputError(f"{path}: an eP-ALM config is a mapping of settings, not {type(values).__name__}")
    for key, (default, accepted, needs) in UNSUPPORTED.items():
        if values.get(key, default) != accepted:
            raise BadInputError(f"{path}: {key}: {values.get(key, default)!r} is not supported (it needs {needs})")
    try:
        official = build(OfficialConfig, {key: values[key] for key in OFFICIAL_KEYS if key in values}, "setting")
    except ValueError as error:
        raise BadInputError(f"{path}: {error}") from error
    return official, values


def adapter_config(official: OfficialConfig, config_path: Path, lm: str, encoder: str | None,
                   task: str | None) -> AdapterConfig:
    """The adapter settings that compute what the official model computes with this config (``layout: paper``).

    Decoding recomputes the whole sequence at each new token (``use_cache: false``), as the official code does:
    its visual token attends to later columns, so a KV cache only approximates it. ``--use-cache true``, or removing
    ``use_cache`` from the saved adapter_config.json, gives the faster cached approximation.
    """
    task = task or ("caption" if official.special_answer_token is None else "vqa")
    if task == "vqa" and official.special_answer_token != "</a>":
        raise BadInputError(f"{config_path}: special_answer_token {official.special_answer_token!r}: the paper "
                            f"layout asks questions as {PAPER_TEMPLATES['vqa']!r}, so it needs '</a>'")
    if encoder is None and official.vision_model_name != OFFICIAL_VISION_MODEL:
        raise BadInputError(f"{config_path}: vision_model_name {official.vision_model_name!r}: name that encoder "
                            "with --encoder")
    shared = bool(official.shared_connector)
    return AdapterConfig(
        lm=lm, encoder=encoder or DEFAULT_ENCODER, layout="paper", connector="epalm",
        connector_options={} if shared else {"per_block": True}, shared_linear=shared,
        num_blocks=official.injected_hidden_states,
        inject_layers=list(range(official.start_layer_idx, official.end_layer_idx)),
        prompt_length=official.prompt_len, prompt_mlp=official.mlp, encoder_norm=True, token_norm=False,
        loss="text", lm_dropout=True, task=task, generation={"num_beams": official.num_beams, "use_cache": False})


def tensor_names(official: OfficialConfig) -> dict[str, str]:
    """Each official tensor name of a checkpoint of this config, and the adapter's name for it."""
    kinds = ("weight", "bias")
    if official.shared_connector:
        names = {f"connector.0.{kind}": f"connector.linear.{kind}" for kind in kinds}
    else:
        names = {f"connector.{i}.{kind}": f"connector.linears.{i}.{kind}"
                 for i in range(official.injected_hidden_states) for kind in kinds}
    names["prompt_module.prefix_embedding.0.weight"] = "prompt"
    if official.mlp:  # Embedding, Linear, Tanh, Linear there; Linear, Tanh, Linear here
        names.update({f"prompt_module.prefix_embedding.{theirs}.{kind}": f"prompt_mlp.{ours}.{kind}"
                      for theirs, ours in ((1, 0), (3, 2)) for kind in kinds})
    return names


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The saved mapping, built by ``torch.load(weights_only=True)``: tensors and plain values, never an object."""
    from .train import UNREADABLE  # train brings accelerate: imported to read a checkpoint, not to start the CLI

    regular_file(path, MAX_CHECKPOINT_BYTES)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BadInputError(f"{path}: torch.load(weights_only=True) refuses it ({refusal_reason(error)}); "
                            "sensorium never unpickles objects") from error
    except UNREADABLE as error:
        raise BadInputError(f"{path}: not a PyTorch checkpoint ({refusal_reason(error)})") from error
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise BadInputError(f"{path}: no 'model' mapping of tensors (an eP-ALM checkpoint saves the trained "
                            "tensors under 'model')")
    return saved


def check_recorded_config(saved: dict[str, Any], values: dict[str, Any], path: Path, config_path: Path) -> None:
    """The config saved in the checkpoint, where there is one, must agree with the one given on every deciding
    key: a wrong layer range would load without a shape error and compute another function."""
    recorded = saved.get("config")
    if not isinstance(recorded, dict):
        return
    for key in (*OFFICIAL_KEYS, *UNSUPPORTED):
        if recorded.get(key) != values.get(key):
            raise BadInputError(f"{path}: trained with {key}: {recorded.get(key)!r}, but {config_path} says "
                                f"{values.get(key)!r}; give the config it was trained with")


def official_tensors(trained: dict[Any, Any], names: dict[str, str], path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's trained tensors (its 'model'), once their names are exactly those of its config (``names``)."""
    inside = [key for key in trained if "adapter" in str(key)]
    if inside:
        raise BadInputError(f"{path}: tensor {inside[0]!r} belongs to adapter layers inside the LM (use_adapters), "
                            "which sensorium does not import")
    missing = [name for name in names if name not in trained]
    if missing:
        raise BadInputError(f"{path}: 'model' lacks {missing[0]!r}, which the config implies")
    unknown = [key for key in trained if key not in names]
    if unknown:
        raise BadInputError(f"{path}: 'model' holds {unknown[0]!r}, which the config does not explain")
    for name, tensor in trained.items():
        if not isinstance(tensor, torch.Tensor):
            raise BadInputError(f"{path}: 'model' holds {type(tensor).__name__} under {name!r}, not a tensor")
    return trained


def adapter_state(tensors: dict[str, torch.Tensor], names: dict[str, str], model: PerceptualLM,
                  source: str) -> dict[str, torch.Tensor]:
    """The tensors under the adapter's names, each checked under its official name against its parameter."""
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        check_tensor(tensor, list(params[names[name]].shape), name, source)
    return {names[name]: tensor.float() for name, tensor in tensors.items()}


def import_epalm(checkpoint: str | Path, config: str | Path, out: str | Path, lm: str = DEFAULT_LM,
                 encoder: str | None = None, task: str | None = None) -> PerceptualLM:
    """Write an official eP-ALM checkpoint as an adapter folder ``out`` (new or empty); the model it loads into.

    Everything the files alone can refuse is refused before the LM is loaded. The LM is loaded once, in bfloat16:
    here it only gives the adapter its shapes (and the ``</a>`` token), at half the memory of OPT-2.7B in float32.
    """
    checkpoint, config, out = Path(checkpoint), Path(config), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: already exists and is not empty; name a new folder")
    official, values = read_official_config(config)
    settings = adapter_config(official, config, lm, encoder, task)
    saved = read_checkpoint(checkpoint)
    check_recorded_config(saved, values, checkpoint, config)
    names = tensor_names(official)
    tensors = official_tensors(saved["model"], names, checkpoint)
    model = build_model(settings, *load_lm(settings.lm, torch.bfloat16))
    model.load_adapter_state(adapter_state(tensors, names, model, f"{checkpoint} (over {lm} and {settings.encoder})"),
                             checkpoint)
    model.save_pretrained(out)
    return model
