"""Sensorium: give a frozen language model senses by training only a tiny connector (eP-ALM)."""

import logging

# torchao (int8 frozen weights), which transformers imports whenever it is installed, reports the GPU-only
# kernels it cannot load on a CPU machine, and torch warns about its registrations: noise at every start.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

from .config import RELEASE, AdapterConfig  # noqa: E402  (after the loggers are quietened: these import torchao)
from .model import PerceptualLM, load  # noqa: E402

__all__ = ["AdapterConfig", "PerceptualLM", "load"]
__version__ = RELEASE or "unknown"
