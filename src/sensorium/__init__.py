"""Sensorium: give a frozen language model senses by training only a tiny connector (eP-ALM)."""

from .config import RELEASE, AdapterConfig
from .model import PerceptualLM, load

__all__ = ["AdapterConfig", "PerceptualLM", "load"]
__version__ = RELEASE or "unknown"
