"""The adapters a server hosts, over ONE copy of each frozen LM and encoder.

An adapter is a few MB; its frozen LM and encoder are hundreds. Adapters naming the same LM share
one LM object (and tokenizer), those naming the same encoder at the same resolution and frame count
(and reading the same tokens: [CLS] or patches) share one encoder, so hosting one more adapter costs
only its own weights.

A composed model (``compose.ComposedLM``: several senses over one LM) is hosted from a composed folder, its
senses loaded over the same shared models, or from adapters already hosted (``compose``), whose very
PerceptualLM objects it then reuses: nothing is loaded twice. It reads ONE upload, decoded once per sense
(``media.read_senses``): a video and its sound track for video and audio senses, a still frame for an image
sense. Its modality is "audiovisual" for a video sense and an audio sense, else its senses' modalities
joined with "+" in sense order (e.g. "image+audio").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compose import ComposedLM, is_composition, read_composition
from ..config import WEIGHTS_NAME, AdapterConfig, model_identity
from ..encoders import Encoder, load_encoder
from ..layout import encoder_tokens
from ..lm import hold_weights, load_lm, loading_dtype, weight_format
from ..media.video import DEFAULT_FRAMES
from ..model import PerceptualLM
from .media import MediaLimits, read_media, read_senses


class UnknownAdapterError(LookupError):
    """A request named an adapter that the server does not host (HTTP 404)."""


@dataclass
class HostedAdapter:
    name: str
    folder: Path
    model: PerceptualLM

    @property
    def task(self) -> str:
        return self.model.config.task

    @property
    def modality(self) -> str:
        return self.model.encoder.modality

    @property
    def num_frames(self) -> int:
        """How many frames a video adapter's encoder samples from a clip; unused by other adapters."""
        return getattr(self.model.encoder, "num_frames", DEFAULT_FRAMES)

    @property
    def batch_key(self) -> tuple:
        """Adapters with equal keys can share one generate() call (see ``model.generate_mixed``)."""
        return model_identity(self.model.config.lm), self.model.batch_layout

    @property
    def encode_key(self) -> tuple:
        """Jobs with equal keys are encoded by one forward: one shared encoder, one choice of stored blocks."""
        return id(self.model.encoder), self.model.layout.stored_blocks

    @property
    def upload_modality(self) -> str:
        """What an upload must be."""
        return self.modality

    @property
    def reads(self) -> str:
        """The accepted upload, in words (for the error refusing another)."""
        return self.modality

    def read(self, data: bytes, name: str, limits: MediaLimits) -> Any:
        """The upload decoded as the model's ``encode`` takes it."""
        return read_media(data, name, limits, self.num_frames).value

    @property
    def size_bytes(self) -> int:
        return (self.folder / WEIGHTS_NAME).stat().st_size

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {"name": self.name, "task": self.task, "modality": self.modality, "lm": config.lm,
                "encoder": config.encoder, "image_size": config.image_size,
                "trainable_parameters": self.model.parameter_counts()[0], "size_bytes": self.size_bytes}


def composed_modality(modalities: list[str]) -> str:
    """"audiovisual" for a video sense and an audio sense; otherwise the senses' modalities joined with "+"."""
    return "audiovisual" if sorted(modalities) == ["audio", "video"] else "+".join(modalities)


@dataclass
class HostedComposition:
    """A composed model: its senses (each a hosted adapter's model, or a composed folder's sense) in prefix order.

    The lead (first) sense gives the task and the decoding settings. Its jobs batch only with each other.
    """

    name: str
    senses: list[HostedAdapter]
    model: ComposedLM
    folder: Path | None = None  # a composed folder; None when composed from hosted adapters

    @property
    def task(self) -> str:
        return self.model.config.task

    @property
    def modality(self) -> str:
        return composed_modality([sense.modality for sense in self.senses])

    @property
    def upload_modality(self) -> str:
        """The senses' one modality when they share it; otherwise a video (its frames, a still frame of it, its
        sound track)."""
        modalities = {sense.modality for sense in self.senses}
        return modalities.pop() if len(modalities) == 1 else "video"

    @property
    def reads(self) -> str:
        sound = self.upload_modality == "video" and any(sense.modality == "audio" for sense in self.senses)
        return f"{self.upload_modality} with a sound track" if sound else self.upload_modality

    @property
    def batch_key(self) -> tuple:
        return "composed", self.name

    @property
    def encode_key(self) -> tuple:
        return "composed", self.name

    def read(self, data: bytes, name: str, limits: MediaLimits) -> tuple[Any, ...]:
        """One decoded medium per sense, in sense order (what ``ComposedLM.encode`` takes for one input)."""
        return read_senses(data, name, limits, [(sense.name, sense.modality, sense.num_frames)
                                                for sense in self.senses], self.name)

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {"name": self.name, "task": self.task, "modality": self.modality, "lm": config.lm,
                "encoder": " + ".join(sense.model.config.encoder for sense in self.senses),
                "image_size": config.image_size, "senses": [sense.name for sense in self.senses],
                "trainable_parameters": self.model.parameter_counts()[0],
                "size_bytes": sum(sense.size_bytes for sense in self.senses)}


class AdapterRegistry:
    """Named adapters; frozen models are loaded on first use and shared by every later adapter."""

    def __init__(self, device: str = "cpu", weights: str = "auto", captions: bool = False) -> None:
        """``captions``: some hosted adapter will write captions (``auto`` then keeps float32, see
        ``lm.weight_format``)."""
        self.device = device
        self.weights = weight_format(weights, device, captions)  # how every frozen LM holds its weights
        self.adapters: dict[str, HostedAdapter | HostedComposition] = {}
        self._lms: dict[str, tuple[Any, Any]] = {}
        self._encoders: dict[tuple[str, int | None, str, int | None], Encoder] = {}

    def add(self, name: str, folder: str | Path) -> HostedAdapter | HostedComposition:
        """An adapter folder, or a composed model's folder (its senses loaded over the shared models)."""
        if name in self.adapters:
            raise ValueError(f"adapter name '{name}' given twice")
        folder = Path(folder)
        if is_composition(folder):
            composition = read_composition(folder)
            senses = [HostedAdapter(sense, folder / sense, self._load(folder / sense)) for sense in composition.senses]
            model = ComposedLM([sense.model for sense in senses], composition.senses, composition.mode,
                               composition.positions, composition.rule)
            self.adapters[name] = HostedComposition(name, senses, model.eval(), folder)
        else:
            self.adapters[name] = HostedAdapter(name, folder, self._load(folder))
        return self.adapters[name]

    def compose(self, name: str, senses: list[str]) -> HostedComposition:
        """Hosted adapters composed, in the order given, into one model under ``name``: their very models (and
        so their LM and encoders) are shared, nothing is loaded. Untuned, they answer by selection, with the default
        rule (``compose.default_rule``)."""
        if name in self.adapters:
            raise ValueError(f"adapter name '{name}' given twice")
        if len(senses) < 2:
            raise ValueError(f"composed model '{name}' needs at least two hosted adapters, not {len(senses)}: "
                             "--compose NAME=A,B")
        unknown = [sense for sense in senses if sense not in self.adapters]
        if unknown:
            raise ValueError(f"composed model '{name}': unknown adapter '{unknown[0]}'; hosted: "
                             f"{', '.join(sorted(self.adapters))} (give it with --adapter first)")
        hosted = [self.adapters[sense] for sense in senses]
        nested = [sense.name for sense in hosted if isinstance(sense, HostedComposition)]
        if nested:
            raise ValueError(f"composed model '{name}': '{nested[0]}' is itself composed; compose single adapters")
        try:
            model = ComposedLM([sense.model for sense in hosted], senses)
        except ValueError as error:
            raise ValueError(f"composed model '{name}': {error}") from error
        self.adapters[name] = HostedComposition(name, hosted, model.eval())
        return self.adapters[name]

    def _load(self, folder: Path) -> PerceptualLM:
        """An adapter over the shared LM and encoder, loading them on first use."""
        config = AdapterConfig.load(folder)
        lm_key = model_identity(config.lm)
        if lm_key not in self._lms:
            lm, tokenizer = load_lm(config.lm, loading_dtype(self.weights))
            self._lms[lm_key] = hold_weights(lm, self.weights) if self.weights == "int8" else lm, tokenizer
        tokens = encoder_tokens(config)
        encoder_key = (model_identity(config.encoder), config.image_size, tokens, config.num_frames)
        if encoder_key not in self._encoders:
            self._encoders[encoder_key] = load_encoder(config.encoder, image_size=config.image_size,
                                                       num_frames=config.num_frames, tokens=tokens)
        lm, tokenizer = self._lms[lm_key]
        model = PerceptualLM.from_pretrained(folder, lm=lm, tokenizer=tokenizer, encoder=self._encoders[encoder_key])
        return model.to(self.device).eval()

    def get(self, name: str) -> HostedAdapter | HostedComposition:
        if name not in self.adapters:
            raise UnknownAdapterError(f"unknown adapter '{name}'; hosted: {', '.join(sorted(self.adapters))}")
        return self.adapters[name]

    @property
    def frozen_models(self) -> int:
        """How many frozen LMs and encoders are in memory, whatever the number of adapters."""
        return len(self._lms) + len(self._encoders)


def writes_captions(folder: str | Path) -> bool:
    """Whether the adapter in ``folder`` (or a sense of the composed model there) writes captions."""
    folder = Path(folder)
    if is_composition(folder):
        return any(writes_captions(folder / sense) for sense in read_composition(folder).senses)
    return AdapterConfig.load(folder).does("caption")
