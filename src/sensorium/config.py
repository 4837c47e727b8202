"""The adapter's configuration: everything needed to rebuild a model around its trained weights."""

from __future__ import annotations

import dataclasses
import json
import string
from dataclasses import field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ConfigDict, StrictBool, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass

from .errors import BadInputError
from .files import MAX_DATA_BYTES, regular_file
from .schema import Count, bounded, build

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
QUESTIONS_NAME = "questions.safetensors"  # what the adapter was trained to be asked (routing.py)
# The adapter format this code writes, and the newest it reads. It goes up with any change that code
# knowing only the formats before it would misread (a setting renamed, weights laid out anew).
FORMAT_VERSION = 1
try:
    RELEASE: str | None = version("sensorium")  # the installed release, as its package metadata says
except PackageNotFoundError:  # a source tree that was not installed
    RELEASE = None

# What a task changes: the text around the media and how answers are decoded. A VQA answer is a word
# or two, read greedily; a caption is a sentence, found by beam search as in the captioning literature.
TASKS: dict[str, dict[str, Any]] = {
    "vqa": {"template": "Question: {question} Answer:", "generation": {"max_new_tokens": 10, "num_beams": 1}},
    "caption": {"template": "A picture of", "generation": {"max_new_tokens": 30, "num_beams": 3}},
}
# A multitask adapter answers questions and writes captions; its input says which: a question goes into the
# VQA template (its ``template``), no question means a caption (the caption task's template). Its
# ``generation`` holds one mapping of options per task ({"vqa": {...}, "caption": {...}}).
MULTITASK = "multitask"

# How the frozen LM can hold its weights at inference; the adapter stays float32 whatever is chosen.
WEIGHT_FORMATS = ("float32", "bfloat16", "float16", "int8")
# How a selecting composition keeps one sense's answer (compose.py): the surest, the one its question is routed to,
# or both weighed.
SelectRule = Literal["likelihood", "route", "route+likelihood"]
SELECT_RULES: tuple[str, ...] = get_args(SelectRule)
# How a video encoder's per-frame tokens reach the LM: averaged into one token per block, exactly like an
# image's; one token per frame in time order (the slot then spans one column per frame); or two tokens,
# the mean and the change from the first frame to the last (what moved, grew or turned, as one vector the
# shared linear layer can map to a word, where ``frames`` leaves the comparison of frames to the frozen LM).
TEMPORAL = ("mean", "frames", "change")
# How the adapter's columns lie in the LM's sequence (see layout.LAYOUTS' docstring in paper.py): ours, a causal slot
# present from the input after BOS and the soft prompt; or eP-ALM's official one, the visual token in front of the
# whole sequence from the first injection layer on, open to every column, the soft prompt before BOS.
LAYOUTS = ("sensorium", "paper")
# What the training loss covers: the answer's tokens (ours), or every text token after BOS, the question's included,
# summed per sample (the official eP-ALM training loss).
LOSSES = ("answer", "text")
# The official eP-ALM text around the media, per task: the question, "?" and an added token "</a>" before the answer;
# nothing but BOS before a caption.
PAPER_TEMPLATES = {"vqa": "{question}?</a>", "caption": ""}
PAPER_ADDED_TOKENS = ("</a>",)
# The paper layout's visual token reads every column, later text and padding included (official), or only itself
# and what precedes it (causal), which a KV cache holds exactly.
VISUAL_ROWS = ("open", "causal")
# Our layout: the order of the columns before the text, BOS (where the tokenizer adds one), the soft prompt and the
# slot. Ours puts BOS first, where the LM saw it in pre-training; the other orders measure the official layout's
# placements one at a time (the prompt before BOS; the visual token in front of the whole sequence).
PREFIX_PARTS = ("bos", "prompt", "slot")
# What a template may hold besides plain text: where the question goes.
TEMPLATE_FIELDS = ("question",)
# Settings are declared: a wrong type or an unknown name is an error, never silently converted or ignored.
SETTINGS = ConfigDict(extra="forbid")


def model_identity(name_or_path: str) -> str:
    """One key per frozen model however its folder is spelled (``lm``, ``lm/``, ``./lm``, a link to it): the
    resolved path of a folder or file that exists; a packaged name or hub id as it is. Settings naming models are
    compared by it, never as strings."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def readable_format(kind: str, format_version: int, newest: int) -> int:
    """``format_version`` of a saved ``kind`` ("adapter", "composition"), unless it is newer than this code reads."""
    if format_version > newest:
        raise ValueError(f"{kind} format {format_version} is newer than this sensorium reads ({newest}); "
                         "upgrade sensorium to load it")
    return format_version


@dataclass(config=SETTINGS)
class AdapterFormat:
    """What wrote an adapter_config.json, recorded beside the settings as PEFT records its version: the
    format, so that code older than the adapter refuses it in one line instead of misreading it, and the
    sensorium release, to tell which code trained it."""

    format_version: Count = 1  # a config saved before the format was recorded is format 1
    sensorium_version: str | None = None  # None: saved from a source tree that was not installed

    @field_validator("format_version")
    @classmethod
    def _readable(cls, format_version: int) -> int:
        return readable_format("adapter", format_version, FORMAT_VERSION)

    @classmethod
    def current(cls) -> AdapterFormat:
        """The format this code writes, and the installed release."""
        return cls(FORMAT_VERSION, RELEASE)


FORMAT_FIELDS = tuple(spec.name for spec in dataclasses.fields(AdapterFormat))


@dataclass(config=SETTINGS)
class Decoding:
    """The generate() options a recipe, an adapter's config, a command line or a request may set, each within its
    bound (schema.BOUNDS): a beam count of 0 divides by zero inside generate(), one of a million asks for the memory
    of a million sequences, and neither may wait until a run's final evaluation to say so. None: not set."""

    max_new_tokens: bounded("max_new_tokens") | None = None
    min_new_tokens: bounded("min_new_tokens") | None = None
    num_beams: bounded("num_beams") | None = None
    length_penalty: bounded("length_penalty") | None = None
    repetition_penalty: bounded("repetition_penalty") | None = None
    no_repeat_ngram_size: bounded("no_repeat_ngram_size") | None = None
    use_cache: StrictBool | None = None  # False: recompute the whole sequence for each token (exact for layout paper)
    do_sample: StrictBool | None = None  # sampling (the OpenAI route's temperature above 0); None: greedy or beams
    temperature: bounded("temperature") | None = None
    top_p: bounded("top_p") | None = None

    @model_validator(mode="after")
    def _shortest_fits_longest(self) -> Decoding:
        if None not in (self.min_new_tokens, self.max_new_tokens) and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) is more than max_new_tokens "
                             f"({self.max_new_tokens})")
        return self

    @classmethod
    def checked(cls, options: dict[str, Any], where: str = "") -> dict[str, Any]:
        """``options`` once every one is known and in bounds, or a one-line ValueError naming each wrong one
        (``where``: the section holding them, as ``generation``)."""
        decoding = build(cls, options, "generation option", f"{where}." if where else "")
        return {key: value for key, value in dataclasses.asdict(decoding).items() if value is not None}


@dataclass(config=SETTINGS)
class AdapterConfig:
    """Serialised as adapter_config.json beside adapter.safetensors (the PEFT contract)."""

    lm: str = "smollm2-135m"
    encoder: str = "dinov2-small"
    image_size: bounded("image_size") | None = None  # encoder input resolution; None keeps the encoder's own
    num_frames: bounded("frames") | None = None  # frames per video; None: 8 for frames:NAME, a video model's own
    temporal: str = "mean"  # mean | frames | change: see TEMPORAL
    connector: str = "epalm"  # epalm | epalm-patches | limber-1 | limber-all | mapl (see connectors/)
    connector_options: dict[str, Any] = field(default_factory=dict)  # the connector's own options
    # Injecting connectors (epalm, epalm-patches) read several blocks and feed LM layers; input connectors
    # (limber-1, limber-all, mapl) read one block, the last unless encoder_blocks names another.
    num_blocks: bounded("blocks") = 6  # the [CLS] of the last N encoder blocks ...
    encoder_blocks: list[bounded("layer")] | None = None  # ... or these 0-based blocks, shallow first
    inject_layers: list[bounded("layer")] | None = None  # None: the paper's relative range of LM layers
    shared_linear: StrictBool = True  # one linear layer for all injection layers (False: one per layer)
    prompt_length: bounded("prompt_length") = 1  # trainable soft-prompt tokens at the input
    token_norm: StrictBool = True
    # Each block's [CLS] through the encoder's own final LayerNorm (affine included) before the connector, as the
    # official eP-ALM ViT gives them.
    encoder_norm: StrictBool = False
    # The soft prompt produced by an MLP (Linear, Tanh, Linear) from its embedding, as configs/image/ePALM_vqa.yaml.
    prompt_mlp: StrictBool = False
    layout: str = "sensorium"  # sensorium | paper: see LAYOUTS
    loss: str = "answer"  # answer | text: see LOSSES
    lm_dropout: StrictBool = False  # the frozen LM's own dropout on while training, as the official training ran it
    # Layout paper: the visual token's attention row open to every column (official) or causal (exact with a KV cache).
    visual_row: str = "open"
    column_order: list[str] = field(default_factory=lambda: list(PREFIX_PARTS))  # see PREFIX_PARTS
    task: str = "vqa"  # vqa | caption | multitask (both)
    template: str | None = None  # None: the task's (VQA's for multitask); "{question}" marks where the question goes
    generation: dict[str, Any] = field(default_factory=dict)  # generate() options over the task's (per task: multitask)
    training: dict[str, Any] = field(default_factory=dict)  # recipe that produced the weights
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluation results at save time
    merged_from: dict[str, Any] = field(default_factory=dict)  # a merged adapter's ingredients and weights

    @field_validator("task", "temporal", "layout", "loss", "visual_row")
    @classmethod
    def _known_choice(cls, value: str, info: ValidationInfo) -> str:
        choices, what = {"task": ((*TASKS, MULTITASK), "task"),
                         "temporal": (TEMPORAL, "temporal aggregation"),
                         "layout": (LAYOUTS, "layout"), "loss": (LOSSES, "loss"),
                         "visual_row": (VISUAL_ROWS, "visual row")}[info.field_name]
        if value not in choices:
            raise ValueError(f"unknown {what} '{value}'; available: {', '.join(choices)}")
        return value

    @field_validator("column_order")
    @classmethod
    def _prefix_permutation(cls, order: list[str]) -> list[str]:
        if sorted(order) != sorted(PREFIX_PARTS):
            raise ValueError(f"column_order {order} must name each of {', '.join(PREFIX_PARTS)} once")
        return order

    @field_validator("template")
    @classmethod
    def _template_fields(cls, template: str | None) -> str | None:
        """Checked here, not when the first prompt is formatted hours into a run."""
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(template or "") if name is not None]
        except ValueError as error:
            raise ValueError(f"{template!r} is not a template ({error}; write {{{{ and }}}} for literal braces)") \
                from None
        unknown = [name for name in names if name not in TEMPLATE_FIELDS]
        if unknown:
            raise ValueError(f"{template!r} has the placeholder {{{unknown[0]}}}; a template may only hold "
                             f"{', '.join('{' + name + '}' for name in TEMPLATE_FIELDS)}")
        return template

    def __post_init__(self) -> None:
        if self.template is None:
            self.template = self.task_template("vqa" if self.task == MULTITASK else self.task)
        self.check_generation(self.generation, "generation")

    def check_generation(self, generation: dict[str, Any], where: str) -> None:
        """Decoding options as ``Decoding`` declares them; a multitask adapter's come per task: its two tasks
        decode differently."""
        if self.task != MULTITASK:
            Decoding.checked(generation, where)
            return
        unknown = sorted(set(generation) - set(TASKS))
        if unknown or not all(isinstance(v, dict) for v in generation.values()):
            raise ValueError(f"{where}: a multitask adapter's options are given per task ({', '.join(TASKS)}: "
                             f"{{...}}), not {unknown or generation}")
        for task, options in generation.items():
            Decoding.checked(options, f"{where}.{task}")

    def task_template(self, task: str) -> str:
        """The text around a ``task`` input in this adapter's layout, when the adapter names none."""
        return PAPER_TEMPLATES[task] if self.layout == "paper" else TASKS[task]["template"]

    def does(self, task: str) -> bool:
        """Whether this adapter was trained for ``task`` (vqa or caption)."""
        return self.task in (task, MULTITASK)

    def task_of(self, questions: list[str]) -> str:
        """The task of one generate() call: the adapter's, or for a multitask adapter what the input asks."""
        if self.task != MULTITASK:
            return self.task
        asked = {bool(question) for question in questions}
        if len(asked) > 1:
            raise ValueError("a multitask adapter answers questions and writes captions in separate calls")
        return "vqa" if asked == {True} else "caption"

    def prompt_text(self, question: str) -> str:
        """The text after the media for one input: the template around the question."""
        if self.task == MULTITASK and not question:
            return self.task_template("caption")
        return self.template.format(question=question)

    def generation_defaults(self, task: str | None = None) -> dict[str, Any]:
        """Decoding options of this adapter for ``task`` (default: its own): the task's, then what its recipe set."""
        task = task or self.task
        if not self.does(task) or task == MULTITASK:
            raise ValueError(f"decoding options for task '{task}' of a {self.task} adapter: name vqa or caption")
        # The official code decodes every task with 3 beams.
        layout = {"num_beams": 3} if self.layout == "paper" else {}
        return {**TASKS[task]["generation"], **layout, **self.recipe_generation(task)}

    def recipe_generation(self, task: str) -> dict[str, Any]:
        """The decoding options the recipe set for ``task`` (a multitask adapter keeps them per task)."""
        return self.generation.get(task, {}) if self.task == MULTITASK else self.generation

    def save(self, folder: Path) -> None:
        """The settings, after the format and release that wrote them (AdapterFormat)."""
        values = {**dataclasses.asdict(AdapterFormat.current()), **dataclasses.asdict(self)}
        (folder / CONFIG_NAME).write_text(json.dumps(values, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> AdapterConfig:
        """The config of an adapter folder, or a one-line BadInputError naming the file and each wrong field."""
        path = Path(folder) / CONFIG_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path}: not an adapter folder (no {CONFIG_NAME})")
        try:
            return cls._from_saved(json.loads(regular_file(path, MAX_DATA_BYTES).read_bytes()))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadInputError(f"{path}: not valid JSON ({error})") from error
        except RecursionError as error:
            raise BadInputError(f"{path}: not valid JSON (nested too deeply)") from error
        except ValueError as error:
            raise BadInputError(f"{path}: {error}") from error

    @classmethod
    def _from_saved(cls, values: Any) -> AdapterConfig:
        """A saved config's settings, once its format is known to be readable: a newer format is refused
        before its settings, which it may name or mean differently, are checked."""
        if isinstance(values, dict):
            build(AdapterFormat, {key: values.pop(key) for key in FORMAT_FIELDS if key in values}, "format field")
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any], prefix: str = "") -> AdapterConfig:
        """Checked against the declared fields; ``prefix`` places them in a larger file (``model.`` of a recipe)."""
        return build(cls, values, "adapter setting", prefix)
