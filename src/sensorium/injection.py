"""Where mapped perceptual tokens enter the frozen LM: a reserved slot overwritten inside layers.

The input sequence reserves one position (the *slot*) right after the soft prompt. A forward
pre-hook on each injection layer overwrites the slot's hidden state with that layer's perceptual
token. The sequence length never changes inside the model, so attention masks, positions and the
KV cache stay exactly those of the unmodified decoder, for any transformers architecture.
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
    """Forward pre-hooks that write per-layer tokens into one sequence position of a frozen LM.

    Whether the slot lies in the chunk being computed is decided from the cache length seen by the
    model's top-level forward: prefill, chunked prefill, decode steps, beam search and assisted
    decoding then all behave, and decode steps (slot already cached) cost one comparison.
    """

    def __init__(self, lm: nn.Module, layers: list[int], slot: int) -> None:
        self.slot = slot
        self.layers = layers
        self._tokens: torch.Tensor | None = None  # [batch, len(layers), dim]
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
        """Inject ``tokens`` ([batch, len(layers), dim]) into every forward run inside the block."""
        if tokens.shape[1] != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} tokens per sample, got {tokens.shape[1]}")
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
            column = self.slot - self._chunk_start
            if not 0 <= column < hidden.shape[1]:
                return None
            token = self._tokens[:, position].to(hidden.device, hidden.dtype)  # layers may sit on several GPUs
            if token.shape[0] != hidden.shape[0]:  # beam search / sampling expand the batch
                token = token.repeat_interleave(hidden.shape[0] // token.shape[0], dim=0)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            columns = torch.full_like(rows, column)
            # Out of place: the hidden state is needed unmodified by autograd.
            hidden = hidden.index_put((rows, columns), token)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook
