"""Where mapped perceptual tokens enter the frozen LM: a reserved slot overwritten inside layers.

The input sequence reserves a *slot* right after the soft prompt: one position, or k consecutive ones
when each layer receives k tokens (one per video frame). A forward pre-hook on each injection layer
overwrites the slot's hidden states with that layer's perceptual tokens. The sequence length never
changes inside the model, so attention masks, positions and the KV cache stay exactly those of the
unmodified decoder, for any transformers architecture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder's list of transformer blocks, found by its length rather than by its name."""
    expected = lm.config.get_text_config().num_hidden_layers
    candidates = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m) == expected]
    if not candidates:
        raise ValueError(
            f"{type(lm).__name__}: no list of {expected} decoder layers found; "
            "slot injection needs the decoder blocks as an nn.ModuleList"
        )
    return candidates[0]


def paper_layer_range(num_layers: int) -> list[int]:
    """eP-ALM injects into layers 19..30 of OPT's 32 (1-based); keep that relative range."""
    start = round(18 * num_layers / 32)
    stop = round(30 * num_layers / 32)
    return list(range(start, max(stop, start + 1)))


def spread_blocks(num_tokens: int, num_layers: int) -> list[int]:
    """Which token each injection layer receives: consecutive layers share one, shallow first."""
    return [layer * num_tokens // num_layers for layer in range(num_layers)]


class SlotInjector:
    """Forward pre-hooks that write per-layer tokens into ``columns`` consecutive positions of a frozen LM.

    Which part of the slot lies in the chunk being computed is decided from the cache length seen by
    the model's top-level forward: prefill, chunked prefill (even one splitting the slot), decode steps,
    beam search and assisted decoding then all behave, and decode steps (slot already cached) cost one
    comparison.
    """

    def __init__(self, lm: nn.Module, layers: list[int], slot: int, columns: int = 1) -> None:
        self.slot = slot
        self.columns = columns
        self.layers = layers
        self._tokens: torch.Tensor | None = None  # [batch, len(layers), columns, dim]
        self._chunk_start = 0
        blocks = decoder_layers(lm)
        self._handles = [lm.register_forward_pre_hook(self._track_chunk, with_kwargs=True)]
        for position, index in enumerate(layers):
            hook = self._overwrite_hook(position)
            self._handles.append(blocks[index].register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    @contextmanager
    def injecting(self, tokens: torch.Tensor) -> Iterator[None]:
        """Inject ``tokens`` into every forward run inside the block.

        ``tokens`` is [batch, len(layers), columns, dim], or [batch, len(layers), dim] for a one-column slot.
        """
        tokens = tokens[:, :, None] if tokens.ndim == 3 else tokens
        if tokens.shape[1:3] != (len(self.layers), self.columns):
            raise ValueError(f"expected {len(self.layers)} layers x {self.columns} tokens per sample, "
                             f"got {tuple(tokens.shape[1:3])}")
        self._tokens = tokens
        try:
            yield
        finally:
            self._tokens = None

    def _track_chunk(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._chunk_start = cache.get_seq_length() if cache is not None else 0

    def _overwrite_hook(self, position: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if self._tokens is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            first = self.slot - self._chunk_start  # slot columns within this chunk: [first, first + columns)
            start, stop = max(first, 0), min(first + self.columns, hidden.shape[1])
            if start >= stop:
                return None
            tokens = self._tokens[:, position, start - first:stop - first].to(hidden.device, hidden.dtype)
            if tokens.shape[0] != hidden.shape[0]:  # beam search / sampling expand the batch
                tokens = tokens.repeat_interleave(hidden.shape[0] // tokens.shape[0], dim=0)
            # Out of place: the hidden state is needed unmodified by autograd.
            hidden = torch.cat([hidden[:, :start], tokens, hidden[:, stop:]], dim=1)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook
