"""Compiled decoding in shape buckets: one compile per bucket, not one per request.

A compiled decode step (transformers' compiled generation: a static KV cache, the model's forward through
``torch.compile``, CUDA graphs with ``mode="reduce-overhead"``) is specialised to the shapes it was traced with:
the batch (times the beams) and the static cache's length, which transformers sizes to the prompt plus
``max_new_tokens``. Served requests vary both, so every new pair would compile again (44 to 65 s for SmolLM2-135M
on a 2-core CPU) and, past dynamo's recompile limit, fall back to eager for good. Here both are rounded up:

* the batch to a power of two (1, 2, 4, 8, ...), the missing rows copies of the last one, whose answers are
  dropped: rows of a left-padded batch do not read each other, so a copy changes no real row's tokens. On a GPU a
  small batch's step is bound by reading the weights, the same whatever its rows, so the copies cost little there;
  on a CPU each row costs its arithmetic;
* the cache to a power of two of at least ``MIN_CACHE_LENGTH`` positions (capped at the LM's context), through the
  static cache's ``max_cache_len``: the positions past a row's tokens are masked out, so they change no score, and
  transformers keeps the largest cache it has made (``_previous_max_cache_length``), so lengths only grow.

The shapes are static in each bucket (``dynamic=False``): each compile is specialised to its bucket, and a server
with batches up to 8 and prompts plus answers up to 512 tokens compiles at most 4 x 4 = 16 times, each once
(``RECOMPILE_LIMIT`` leaves room for all). The prefill is not compiled (transformers runs it eagerly), so the slot
injection's hooks run as they do without compiling; the decode steps, which run none (``layout: paper``: the same
mask hook at every step, see ``FrontInjector``), are what is compiled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch._dynamo
from transformers import CompileConfig

MIN_CACHE_LENGTH = 64  # the shortest static cache: short answers to short questions all share one bucket
RECOMPILE_LIMIT = 64  # compiles of the decode step dynamo keeps (its own default, 8, is fewer than the buckets)


def batch_bucket(rows: int) -> int:
    """The batch a compiled step runs for ``rows`` sequences: the next power of two."""
    return 1 << (rows - 1).bit_length()


def cache_bucket(length: int, context: int | None = None) -> int:
    """The static cache's length for ``length`` positions: the next power of two, at least ``MIN_CACHE_LENGTH``,
    at most the LM's ``context`` (positions past it are never written: the inputs were checked to fit)."""
    bucket = max(MIN_CACHE_LENGTH, 1 << (length - 1).bit_length())
    return bucket if context is None else max(length, min(bucket, context))


def padded_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with copies of its last row appended up to ``rows`` rows."""
    missing = rows - tensor.shape[0]
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])]) if missing > 0 else tensor


@dataclass(frozen=True)
class CompiledDecoding:
    """How generate() compiles its decode step: the ``torch.compile`` backend and mode (``reduce-overhead``: CUDA
    graphs on a GPU, the same compiled code without graphs on a CPU). Passed as ``compiled=`` to a model's
    ``generate`` or to ``generate_mixed``."""

    backend: str = "inductor"
    mode: str = "reduce-overhead"

    def compile_config(self) -> CompileConfig:
        """transformers' compile settings: static shapes (one compile per bucket, each specialised to it), on any
        device (transformers compiles on accelerators only unless told). Equal configs share one compiled call."""
        config = CompileConfig(backend=self.backend, mode=self.mode, dynamic=False, fullgraph=False)
        config._compile_all_devices = True
        return config

    def generate_options(self, positions: int, context: int | None) -> dict[str, Any]:
        """generate() options of a call whose prompt and new tokens take ``positions`` positions."""
        return {"cache_implementation": "static", "max_cache_len": cache_bucket(positions, context),
                "compile_config": self.compile_config()}

    @staticmethod
    @contextmanager
    def compiling() -> Iterator[None]:
        """Room for one compile per bucket: past dynamo's recompile limit a function runs eagerly from then on."""
        with torch._dynamo.config.patch(recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)):
            yield
