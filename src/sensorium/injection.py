"""Where mapped perceptual tokens enter the frozen LM: a reserved slot overwritten inside layers.

The input sequence reserves a *slot* right after the soft prompt: one position, or k consecutive ones
when each layer receives k tokens (one per video frame). In a left-padded batch each row's slot sits
after its own padding, so the hooks take one slot column per row. A forward pre-hook on each injection layer
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


class SlotInjector:
    """Forward pre-hooks that write per-layer tokens into ``columns`` consecutive positions of a frozen LM.

    Which part of the slot lies in the chunk being computed is decided from the cache length seen by
    the model's top-level forward: prefill, chunked prefill (even one splitting the slot), decode steps,
    beam search and assisted decoding then all behave, and decode steps (slot already cached) cost one
    comparison.
    """

    def __init__(self, lm: nn.Module, layers: list[int], columns: int = 1) -> None:
        self.columns = columns
        self.layers = layers
        self._tokens: torch.Tensor | None = None  # [batch, len(layers), columns, dim]
        self._slots: torch.Tensor | None = None  # [batch]: each row's first slot column
        self._span = (0, 0)  # first slot column of any row, last one + 1: a Python test for decode steps
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
    def injecting(self, tokens: torch.Tensor, slots: torch.Tensor) -> Iterator[None]:
        """Inject ``tokens`` into every forward run inside the block, at columns ``slots`` (one per sample).

        ``tokens`` is [batch, len(layers), columns, dim], or [batch, len(layers), dim] for a one-column slot.
        """
        tokens = tokens[:, :, None] if tokens.ndim == 3 else tokens
        if tokens.shape[1:3] != (len(self.layers), self.columns):
            raise ValueError(f"expected {len(self.layers)} layers x {self.columns} tokens per sample, "
                             f"got {tuple(tokens.shape[1:3])}")
        self._tokens, self._slots = tokens, slots
        self._span = (int(slots.min()), int(slots.max()) + self.columns)
        try:
            yield
        finally:
            self._tokens = self._slots = None

    def _track_chunk(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._chunk_start = cache.get_seq_length() if cache is not None else 0

    def _overwrite_hook(self, position: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if self._tokens is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            start, length = self._chunk_start, hidden.shape[1]
            if self._span[0] >= start + length or self._span[1] <= start:  # no slot column in this chunk
                return None
            hidden = self._overwrite(hidden, self._tokens[:, position], start)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def _overwrite(self, hidden: torch.Tensor, tokens: torch.Tensor, chunk_start: int) -> torch.Tensor:
        """``hidden`` [batch, chunk, dim] with its rows' slot columns inside the chunk replaced by ``tokens``."""
        batch = hidden.shape[0]
        slots = self._slots.to(hidden.device)
        tokens = tokens.to(hidden.device, hidden.dtype)
        if tokens.shape[0] != batch:  # beam search / sampling expand the batch
            tokens = tokens.repeat_interleave(batch // tokens.shape[0], dim=0)
            slots = slots.repeat_interleave(batch // len(slots))
        columns = (slots - chunk_start)[:, None] + torch.arange(self.columns, device=hidden.device)
        rows = torch.arange(batch, device=hidden.device)[:, None].expand_as(columns)
        if not (self._span[0] >= chunk_start and self._span[1] <= chunk_start + hidden.shape[1]):
            inside = (columns >= 0) & (columns < hidden.shape[1])  # a chunk that splits some row's slot
            rows, columns, tokens = rows[inside], columns[inside], tokens[inside]
        # Out of place (index_put, not index_put_): the hidden state is needed unmodified by autograd.
        return hidden.index_put((rows, columns), tokens)
