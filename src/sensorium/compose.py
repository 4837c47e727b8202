"""Several senses over one frozen LM: adapters trained apart, composed into one model with no retraining.

Each adapter (a sense: video frames, a sound track, an image) keeps its encoder, connector, soft prompt and slot.
A composition answers in one of two modes.

``select`` (the default, and the zero-shot one): every sense answers alone, exactly as its adapter does, and a
rule (``rule``, ``SELECT_RULES``) keeps one answer per question; no question that needs two senses together can
be answered this way. ``likelihood`` keeps the answer that its own adapter gives the highest log-likelihood: an
adapter answering about what it cannot perceive falls back on its wording prior and is often less sure, but a
confident answer of the wrong kind (a sound adapter's one-token digit to a colour question) wins all the same.
``route`` reads the question instead: the sense whose training questions it resembles answers, the nearest by
the question statistics each adapter records (``routing``), and only that sense generates; it is the default
wherever every sense records them (``default_rule``). ``route+likelihood``
weighs both: the answer's log-likelihood plus the log-probability that the question is its sense's.

``prefix``: one sequence reads every sense at once, ``[bos][prompt 1][slot 1][prompt 2][slot 2]...``, and the
injection layers overwrite all the senses' slot columns in one pass, so the sequence and its KV cache stay those
of the unmodified decoder. Untrained, each sense's steering of the LM disturbs the others'; ``tune`` fine-tunes
such a composition on data that needs every sense, or trains one from fresh adapters (the jointly trained
baseline). Positions are ``parallel`` by default: each sense's columns take the positions they had when its
adapter was trained alone, side by side, and the text starts after the widest sense, so every adapter sees its
prompt and slot at the distance from the question it learned (as parallel context windows share positions);
``serial`` counts the columns one after another. The first sense leads: its template, task and decoding
settings are the composed model's.

A composed model is saved as a folder of adapter folders, one per sense, and ``composition.json`` naming them in
order, with the mode and the select rule.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import field_validator, model_validator
from pydantic.dataclasses import dataclass
from torch import nn
from tqdm.auto import tqdm

from .config import (
    CONFIG_NAME,
    PREFIX_PARTS,
    QUESTIONS_NAME,
    WEIGHTS_NAME,
    AdapterConfig,
    SelectRule,
    model_identity,
    readable_format,
)
from .data.examples import Example
from .errors import BadInputError
from .injection import SlotInjector
from .lm import hold_weights, load_lm, loading_dtype, weight_format
from .model import PerceptualLM, PrefixedLM, read_weights, tokenizable
from .routing import embed_questions
from .schema import Count, build

# A sense's answers to some rows: (sense, its features of those rows, their questions, their contexts) -> answers.
Answering = Callable[[PerceptualLM, torch.Tensor, list[str], list[str] | None], list[str]]
COMPOSITION_NAME = "composition.json"
COMPOSITION_VERSION = 1
MAX_COMPOSITION_BYTES = 64 * 1024  # a list of a few names; anything larger is not a composition file
SENSE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # names a sense's sub-folder: no path in it
ROUTING_RULES = ("route", "route+likelihood")  # the rules that read the senses' question statistics
# A new select composition's rule where every sense records its training questions: on the audiovisual
# benchmark's three seed pairs it keeps each sense at its single-sense score, where likelihood lets a confident
# answer of the wrong kind win (docs/results/composing.md).
DEFAULT_RULE = "route"


@dataclass(config={"extra": "forbid"})
class Composition:
    """composition.json: which sub-folders hold the senses, in prefix order."""

    senses: list[str]
    mode: Literal["prefix", "select"] = "prefix"  # files written before select existed are prefix compositions
    positions: Literal["parallel", "serial"] = "parallel"  # of a prefix composition
    rule: SelectRule = "likelihood"  # of a select composition; files written before the rules existed chose so
    format_version: Count = COMPOSITION_VERSION

    @field_validator("senses")
    @classmethod
    def _names(cls, senses: list[str]) -> list[str]:
        if len(senses) < 2:
            raise ValueError("a composition needs at least two senses")
        bad = [name for name in senses if not SENSE_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"sense names must be plain folder names, not {bad}")
        if len(set(senses)) != len(senses):
            raise ValueError(f"sense names repeat: {senses}")
        return senses

    @field_validator("format_version")
    @classmethod
    def _readable(cls, format_version: int) -> int:
        return readable_format("composition", format_version, COMPOSITION_VERSION)

    @model_validator(mode="after")
    def _rule_selects(self) -> Composition:
        if self.mode != "select" and self.rule != "likelihood":
            raise ValueError(f"rule {self.rule!r} chooses among answers: it needs mode select, not {self.mode}")
        return self


def default_rule(mode: str, senses: Sequence[PerceptualLM]) -> str:
    """``DEFAULT_RULE`` for a select composition whose every sense records its training questions (training
    writes them); likelihood, which needs nothing recorded, for one that does not (an adapter saved elsewhere)."""
    recorded = all(sense.questions is not None for sense in senses)
    return DEFAULT_RULE if mode == "select" and recorded else "likelihood"


def is_composition(folder: str | Path) -> bool:
    return (Path(folder) / COMPOSITION_NAME).is_file()


class ComposedLM(PrefixedLM):
    """Adapters over one shared frozen LM, each reading its own sense, answering as one model.

    The features of one input are every sense's stored features, flattened and joined in sense order
    (``feature_sizes``), so that a composed model's features index, cache and batch like a single adapter's.
    """

    def __init__(self, senses: Sequence[PerceptualLM], names: Sequence[str], mode: str = "select",
                 positions: str = "parallel", rule: str | None = None):
        super().__init__()
        rule = rule or default_rule(mode, senses)
        self.composition = build(Composition, {"senses": list(names), "mode": mode, "positions": positions,
                                               "rule": rule}, "composition field")
        names = self.composition.senses
        if len(senses) != len(names):
            raise ValueError(f"{len(senses)} senses but {len(names)} names")
        lead = senses[0]
        for name, sense in zip(names[1:], senses[1:], strict=True):
            if sense.lm is not lead.lm:
                raise ValueError(f"sense '{name}' has its own LM; composed senses share the first sense's LM "
                                 f"({lead.config.lm}, loaded once)")
        self.names = tuple(names)
        self.senses = nn.ModuleList(senses)
        self.config = lead.config
        self.lm, self.tokenizer = lead.lm, lead.tokenizer
        self.bos = lead.bos
        self.feature_sizes = [math.prod(sense.layout.feature_shape) for sense in senses]
        if self.composition.rule in ROUTING_RULES and self.unrecorded:
            raise BadInputError(f"rule {self.composition.rule!r} reads what each sense was trained to be asked: "
                                f"sense(s) {self.unrecorded} have no {QUESTIONS_NAME} (record it with `sensorium "
                                "questions ADAPTER`, or choose rule likelihood)")
        if not self.selects:
            self._lay_out(senses, names, positions)

    @property
    def unrecorded(self) -> list[str]:
        """The senses that record no training questions, which the routing rules need."""
        return [name for name, sense in zip(self.names, self.senses, strict=True) if sense.questions is None]

    def _lay_out(self, senses: Sequence[PerceptualLM], names: Sequence[str], positions: str) -> None:
        """The one sequence of a prefix composition: every sense's columns, their positions and injected slots."""
        reordered = [name for name, sense in zip(names, senses, strict=True)
                     if sense.config.column_order != list(PREFIX_PARTS)]
        if reordered:
            order = senses[list(names).index(reordered[0])].config.column_order
            raise ValueError(f"a prefix composition lays BOS, then each sense's prompt and slot: sense "
                             f"'{reordered[0]}' has column_order {order}")
        injecting = [(name, sense) for name, sense in zip(names, senses, strict=True) if sense.injector is not None]
        layer_sets = {tuple(sense.layout.layers) for _, sense in injecting}
        if len(layer_sets) > 1:
            listed = "; ".join(f"'{name}' into {list(sense.layout.layers)}" for name, sense in injecting)
            raise ValueError(f"composed senses must inject into the same LM layers: {listed}")
        self.slot_index = len(self.bos)  # the injected columns are counted from the prefix's first
        offsets, column, place = [], 0, []
        for sense in senses:
            width = sense.config.prompt_length + sense.slot_count
            if sense.injector is not None:
                offsets += range(column + sense.config.prompt_length, column + width)
            place += range(width) if positions == "parallel" else range(column, column + width)
            column += width
        self.prefix_length = len(self.bos) + column
        # Position of each column of a row's prefix, and how many positions the text comes before its column.
        self.prefix_positions = torch.tensor(list(range(len(self.bos))) + [len(self.bos) + p for p in place])
        self.text_shift = column - (max(place) + 1)
        self.injector = SlotInjector(self.lm, list(layer_sets.pop()), offsets) if injecting else None

    @property
    def selects(self) -> bool:
        return self.composition.mode == "select"

    # ---- encode -> map ----------------------------------------------------------------------
    def _per_sense(self, media: list[Any]) -> list[list[Any]]:
        """Each sense's media: one file that every sense reads (a video and its sound track), or one per sense."""
        columns = [[] for _ in self.senses]
        for item in media:
            items = list(item) if isinstance(item, (list, tuple)) else [item] * len(self.senses)
            if len(items) != len(self.senses):
                raise BadInputError(f"{len(items)} media for {len(self.senses)} senses ({', '.join(self.names)}): "
                                    "give one file that every sense reads, or one per sense in order")
            for column, one in zip(columns, items, strict=True):
                column.append(one)
        return columns

    @torch.inference_mode()
    def encode(self, media: list[Any]) -> torch.Tensor:
        """[batch, sum of feature_sizes] float32: each sense's stored features, flattened and joined."""
        return self.pack([sense.encode(items) for sense, items in zip(self.senses, self._per_sense(media),
                                                                          strict=True)])

    @staticmethod
    def pack(features: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([part.flatten(1).float() for part in features], dim=1)

    def unpack(self, features: torch.Tensor) -> list[torch.Tensor]:
        """The packed features back into each sense's stored shape."""
        if features.shape[1] != sum(self.feature_sizes):
            raise ValueError(f"composed features have {features.shape[1]} values per input; the senses "
                             f"{', '.join(self.names)} store {sum(self.feature_sizes)}")
        parts = features.split(self.feature_sizes, dim=1)
        return [part.reshape(len(features), *sense.layout.feature_shape)
                for part, sense in zip(parts, self.senses, strict=True)]

    def features_of(self, paths: list[str], batch_size: int, workers: int,
                        skip_bad: bool) -> tuple[torch.Tensor, dict[str, int], list[str]]:
        """Each sense's cached features for the files every sense could read, packed in one row per file."""
        found = [sense.features_of(paths, batch_size, workers, skip_bad) for sense in self.senses]
        kept = [path for path in dict.fromkeys(paths) if all(path in row_of for _, row_of, _ in found)]
        packed = self.pack([features[[row_of[path] for path in kept]] for features, row_of, _ in found])
        errors = [error for _, _, errors in found for error in errors]
        return packed, {path: row for row, path in enumerate(kept)}, errors

    def perceive(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every sense's prefix in turn, and the injected tokens of every injecting sense side by side."""
        self.require_prefix("reads its senses in one sequence")
        prefixes, tokens = [], []
        for sense, part in zip(self.senses, self.unpack(features), strict=True):
            prefix, layer_tokens = sense.perceive(part)
            prefixes.append(prefix.expand(len(features), -1, -1))
            if layer_tokens is not None:
                tokens.append(layer_tokens if layer_tokens.ndim == 4 else layer_tokens[:, :, None])
        return torch.cat(prefixes, dim=1), (torch.cat(tokens, dim=2) if tokens else None)

    def learned_prefix(self) -> torch.Tensor:
        self.require_prefix("reads its senses in one sequence")
        return torch.cat([sense.learned_prefix() for sense in self.senses])

    def require_prefix(self, what: str) -> None:
        if self.selects:
            raise ValueError(f"only a prefix composition {what}; this one selects among its senses' answers "
                             f"({', '.join(self.names)})")

    def positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Each prefix column at its place (``prefix_positions``), the text after the last of them."""
        content = super().positions(mask)
        table = self.prefix_positions.to(mask.device)
        return torch.where(content < self.prefix_length, table[content.clamp(max=self.prefix_length - 1)],
                           content - self.text_shift)

    # ---- generate ---------------------------------------------------------------------------
    def generate(self, features: torch.Tensor, questions: list[str], contexts: list[str] | None = None,
                 **options) -> list[str]:
        if not self.selects:
            return super().generate(features, questions, contexts, **options)
        return self._select(features, questions, contexts,
                            lambda sense, part, asked, said: sense.generate(part, asked, said, **options))

    def generate_uncached(self, features: torch.Tensor, questions: list[str], **options) -> list[str]:
        if not self.selects:
            return super().generate_uncached(features, questions, **options)
        return self._select(features, questions, None,
                            lambda sense, part, asked, _: sense.generate_uncached(part, asked, **options))

    def _select(self, features: torch.Tensor, questions: list[str], contexts: list[str] | None,
                answer: Answering) -> list[str]:
        """Each row's answer from the sense that the composition's rule picks (the earlier sense on a tie)."""
        parts = self.unpack(features)
        if self.composition.rule == "route":
            return self._routed(parts, questions, contexts, answer)
        answers = [answer(sense, part, questions, contexts) for sense, part in zip(self.senses, parts, strict=True)]
        scores = torch.stack([sense.log_likelihood(part, questions, said, contexts).cpu()
                              for sense, part, said in zip(self.senses, parts, answers, strict=True)])
        if self.composition.rule == "route+likelihood":
            scores = scores + self.question_log_priors(questions)
        return [answers[sense][row] for row, sense in enumerate(scores.argmax(0).tolist())]

    def _routed(self, parts: list[torch.Tensor], questions: list[str], contexts: list[str] | None,
                answer: Answering) -> list[str]:
        """Each row answered by the sense nearest its question alone: one generation per row, not one per sense."""
        nearest = self.question_distances(questions).argmin(0)
        kept: list[str] = [""] * len(questions)
        for index, (sense, part) in enumerate(zip(self.senses, parts, strict=True)):
            rows = (nearest == index).nonzero().flatten().tolist()
            if not rows:
                continue
            said = answer(sense, part[rows], [questions[row] for row in rows],
                          None if contexts is None else [contexts[row] for row in rows])
            for row, text in zip(rows, said, strict=True):
                kept[row] = text
        return kept

    def question_distances(self, questions: list[str]) -> torch.Tensor:
        """[senses, batch]: how far each question lies from each sense's training questions, in that sense's
        spreads (``routing.QuestionStats``)."""
        embeddings = embed_questions(self.lm, self.tokenizer, tokenizable(questions, "question"))
        return torch.stack([sense.questions.distances(embeddings) for sense in self.senses])

    def question_log_priors(self, questions: list[str]) -> torch.Tensor:
        """[senses, batch] log-probability that each question is each sense's: a Gaussian of one spread around each
        sense's centroid, normalised over the senses."""
        return torch.log_softmax(-0.5 * self.question_distances(questions).pow(2), dim=0)

    def forward(self, features: torch.Tensor, questions: list[str], targets: list[str],
                contexts: list[str] | None = None) -> torch.Tensor:
        self.require_prefix("trains as one model (compose with mode prefix to tune)")
        return super().forward(features, questions, targets, contexts)

    # ---- save / load ------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        """One adapter folder per sense, then composition.json (written last and atomically: a folder with it
        is complete)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, sense in zip(self.names, self.senses, strict=True):
            sense.save_pretrained(folder / name)
        text = json.dumps(dataclasses.asdict(self.composition), indent=2) + "\n"
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
            handle.write(text)
        Path(handle.name).replace(folder / COMPOSITION_NAME)


def read_composition(folder: str | Path) -> Composition:
    """composition.json, checked; a one-line BadInputError naming the file otherwise."""
    path = Path(folder) / COMPOSITION_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a composed model (no {COMPOSITION_NAME})")
    if path.stat().st_size > MAX_COMPOSITION_BYTES:
        raise BadInputError(f"{path}: {path.stat().st_size:,} bytes; a composition file is a few names")
    try:
        composition = build(Composition, json.loads(path.read_bytes()), "composition field")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise BadInputError(f"{path}: not valid JSON ({error})") from error
    except ValueError as error:
        raise BadInputError(f"{path}: {error}") from error
    missing = [name for name in composition.senses if not (Path(folder) / name / CONFIG_NAME).is_file()]
    if missing:
        raise BadInputError(f"{path}: no adapter folder for sense(s) {missing}")
    return composition


def sense_names(folders: Sequence[str | Path]) -> list[str]:
    """Default names of senses given as adapter folders: the folder's name, or its run's for a training run's
    ``adapter`` folder; repeated names get a number."""
    names = []
    for folder in map(Path, folders):
        folder = folder.resolve()
        name = folder.parent.name if folder.name == "adapter" else folder.name
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("._-")[:60] or "sense"
        names.append(name if name not in names else f"{name}-{len(names) + 1}")
    return names


def compose(folders: Sequence[str | Path], names: Sequence[str] | None = None, weights: str = "float32",
            fresh: bool = False, mode: str = "select", positions: str = "parallel",
            rule: str | None = None) -> ComposedLM:
    """Adapters loaded over one frozen LM (loaded once) and composed in the order given, each with the question
    statistics its folder holds.

    ``fresh``: the adapters' settings with newly initialised weights, the start of a jointly trained model.
    """
    configs = [AdapterConfig.load(folder) for folder in folders]
    weights = weight_format(weights, captions=any(config.does("caption") for config in configs))
    paper = [str(folder) for folder, config in zip(folders, configs, strict=True) if config.layout != "sensorium"]
    if paper:
        raise BadInputError(f"composition lays senses out side by side in the sensorium layout; "
                            f"{', '.join(paper)} {'is' if len(paper) == 1 else 'are'} in layout 'paper'")
    lms = {model_identity(config.lm) for config in configs}
    if len(lms) > 1:
        listed = "; ".join(f"{folder}: {config.lm}" for folder, config in zip(folders, configs, strict=True))
        raise BadInputError(f"composed adapters must share one frozen LM: {listed}")
    lm, tokenizer = load_lm(configs[0].lm, loading_dtype(weights))
    senses = []
    for folder, config in zip(folders, configs, strict=True):
        sense = PerceptualLM(config, lm=lm, tokenizer=tokenizer)
        if not fresh:
            path = Path(folder) / WEIGHTS_NAME
            sense.load_adapter_state(read_weights(path), path)
            sense.read_questions(folder)
        senses.append(sense)
    if weights == "int8":
        hold_weights(lm, weights)
    return ComposedLM(senses, names or sense_names(folders), mode, positions, rule)


def load_composed(folder: str | Path, weights: str = "float32") -> ComposedLM:
    """A composed model saved by ``ComposedLM.save_pretrained``."""
    composition = read_composition(folder)
    return compose([Path(folder) / name for name in composition.senses], composition.senses, weights,
                   mode=composition.mode, positions=composition.positions, rule=composition.rule)


# ---- tune ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tuning:
    """A short training of a composed model on examples that need its senses together."""

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3  # connectors'
    prompt_lr: float = 1e-3  # soft prompts' and slot embeddings'
    warmup_steps: int = 10
    seed: int = 0


def tune(model: ComposedLM, examples: list[Example], features: torch.Tensor, row_of: dict[str, int],
         tuning: Tuning) -> list[float]:
    """AdamW on every sense's connector and prompt (the LM and encoders stay frozen), cosine schedule after a
    warmup, one seeded random answer per example; returns the losses, step by step."""
    from transformers import get_cosine_schedule_with_warmup

    from .recipe import TrainingOptions
    from .train import batch_indices, build_optimizer

    model.require_prefix("can be tuned")
    labelled = [e for e in examples if e.answers and e.media in row_of]
    if not labelled:
        raise ValueError("no examples with an answer and readable media to tune on")
    optimizer = build_optimizer(list(model.senses), TrainingOptions(lr=tuning.lr, prompt_lr=tuning.prompt_lr))
    scheduler = get_cosine_schedule_with_warmup(optimizer, tuning.warmup_steps, tuning.steps)
    model.train()
    losses = []
    progress = tqdm(range(tuning.steps), desc="tuning", unit="step")
    for step in progress:
        indices = batch_indices(step, tuning.batch_size, len(labelled), tuning.seed)
        chooser = random.Random(f"{tuning.seed}-{step}")
        batch = [labelled[i] for i in indices]
        loss = model(features[[row_of[e.media] for e in batch]], [e.question for e in batch],
                     [chooser.choice(e.answers) for e in batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
