"""Trainable connectors: the only part of the model that learns, besides the soft prompt.

One file per connector; ``AdapterConfig.connector`` names one and ``AdapterConfig.connector_options`` sets the
keyword options of its constructor.
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import PLACEMENTS, Connector, ConnectorSetup
from .epalm import EPALMConnector
from .epalm_patches import EPALMPatchesConnector
from .limber_all import LimberAllConnector
from .limber_one import LimberOneConnector
from .mapl import MAPLConnector

__all__ = ["CONNECTORS", "PLACEMENTS", "Connector", "ConnectorSetup", "build_connector", "connector_options",
           "connector_type"]

CONNECTORS: dict[str, type[Connector]] = {
    "epalm": EPALMConnector,
    "epalm-patches": EPALMPatchesConnector,
    "limber-1": LimberOneConnector,
    "limber-all": LimberAllConnector,
    "mapl": MAPLConnector,
}


def connector_type(name: str) -> type[Connector]:
    if name not in CONNECTORS:
        raise ValueError(f"unknown connector '{name}'; available: {', '.join(sorted(CONNECTORS))}")
    return CONNECTORS[name]


def connector_options(name: str) -> list[str]:
    """The keyword options a connector takes besides its setup."""
    parameters = inspect.signature(connector_type(name).__init__).parameters
    return [option for option in parameters if option not in ("self", "setup")]


def build_connector(name: str, setup: ConnectorSetup, options: dict[str, Any] | None = None) -> Connector:
    """The connector ``name`` with its options; ``layout.setting_problems`` has checked them."""
    return connector_type(name)(setup, **(options or {}))
