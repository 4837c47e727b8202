"""Trainable connectors: the only part of the model that learns, besides the soft prompt."""

from __future__ import annotations

from torch import nn

from .epalm import EPALMConnector

CONNECTORS: dict[str, type[nn.Module]] = {"epalm": EPALMConnector}


def build_connector(name: str, encoder_dim: int, lm_dim: int, **options) -> nn.Module:
    if name not in CONNECTORS:
        raise ValueError(f"unknown connector '{name}'; available: {', '.join(sorted(CONNECTORS))}")
    return CONNECTORS[name](encoder_dim, lm_dim, **options)
