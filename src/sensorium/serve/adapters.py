"""The adapters a server hosts, over ONE copy of each frozen LM and encoder.

An adapter is a few MB; its frozen LM and encoder are hundreds. Adapters naming the same LM share
one LM object (and tokenizer), those naming the same encoder at the same resolution and frame count
(and reading the same tokens: [CLS] or patches) share one encoder, so hosting one more adapter costs
only its own weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import WEIGHTS_NAME, AdapterConfig
from ..encoders import Encoder, load_encoder
from ..layout import encoder_tokens
from ..lm import load_lm
from ..media.video import DEFAULT_FRAMES
from ..model import PerceptualLM


class UnknownAdapterError(LookupError):
    """A request named an adapter that the server does not host (HTTP 404)."""


def _source_key(name_or_path: str) -> str:
    """One key per model, however its folder was spelled; packaged names and hub ids stay as they are."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


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
        return _source_key(self.model.config.lm), self.model.batch_layout

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {"name": self.name, "task": self.task, "modality": self.modality, "lm": config.lm,
                "encoder": config.encoder, "image_size": config.image_size,
                "trainable_parameters": self.model.parameter_counts()[0],
                "size_bytes": (self.folder / WEIGHTS_NAME).stat().st_size}


class AdapterRegistry:
    """Named adapters; frozen models are loaded on first use and shared by every later adapter."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.adapters: dict[str, HostedAdapter] = {}
        self._lms: dict[str, tuple[Any, Any]] = {}
        self._encoders: dict[tuple[str, int | None, str, int | None], Encoder] = {}

    def add(self, name: str, folder: str | Path) -> HostedAdapter:
        if name in self.adapters:
            raise ValueError(f"adapter name '{name}' given twice")
        folder = Path(folder)
        config = AdapterConfig.load(folder)
        lm_key = _source_key(config.lm)
        if lm_key not in self._lms:
            self._lms[lm_key] = load_lm(config.lm)
        tokens = encoder_tokens(config)
        encoder_key = (_source_key(config.encoder), config.image_size, tokens, config.num_frames)
        if encoder_key not in self._encoders:
            self._encoders[encoder_key] = load_encoder(config.encoder, image_size=config.image_size,
                                                       num_frames=config.num_frames, tokens=tokens)
        lm, tokenizer = self._lms[lm_key]
        model = PerceptualLM.from_pretrained(folder, lm=lm, tokenizer=tokenizer, encoder=self._encoders[encoder_key])
        self.adapters[name] = HostedAdapter(name, folder, model.to(self.device).eval())
        return self.adapters[name]

    def get(self, name: str) -> HostedAdapter:
        if name not in self.adapters:
            raise UnknownAdapterError(f"unknown adapter '{name}'; hosted: {', '.join(sorted(self.adapters))}")
        return self.adapters[name]

    @property
    def frozen_models(self) -> int:
        """How many frozen LMs and encoders are in memory, whatever the number of adapters."""
        return len(self._lms) + len(self._encoders)
