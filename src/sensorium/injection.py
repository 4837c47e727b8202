"""Where mapped perceptual tokens enter the frozen LM: a reserved slot overwritten inside layers.

The input sequence reserves a *slot* right after the soft prompt: one position, or k consecutive ones
when each layer receives k tokens (one per video frame), or several groups of columns when several senses
share the LM (compose.py: each sense's soft prompt, then its slot). In a left-padded batch each row's slot
sits after its own padding, so the hooks take the slot's first column per row and the columns' offsets
from it. A forward pre-hook on each injection layer overwrites the slot's hidden states with that layer's
perceptual tokens. The sequence length never changes inside the model, so attention masks, positions and
the KV cache stay exactly those of the unmodified decoder, for any transformers architecture.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import Cache


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


_INJECTED_LMS: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # LMs inside some injector's ``injecting``


class SlotInjector:
    """Writes per-layer tokens into the slot columns of a frozen LM, inside ``injecting``.

    ``offsets`` are the slot's columns counted from its first (``range(k)`` for one adapter's k columns),
    in the order of the tokens' column axis.

    The hooks exist only inside ``injecting``: adapters sharing one LM (a server holding many) add
    nothing to each other's forwards, and a dropped adapter leaves no reference to itself in the LM.
    """

    def __init__(self, lm: nn.Module, layers: list[int], offsets: Sequence[int] = (0,)) -> None:
        if list(offsets) != sorted(set(offsets)) or min(offsets) < 0:
            raise ValueError(f"slot offsets must be distinct, increasing and non-negative, not {list(offsets)}")
        self.offsets = tuple(offsets)
        self.layers = layers
        self._lm = lm
        blocks = decoder_layers(lm)
        self._blocks = [blocks[index] for index in layers]

    @contextmanager
    def injecting(self, tokens: torch.Tensor, slots: torch.Tensor) -> Iterator[None]:
        """Inject ``tokens`` into every forward run inside the block, at columns ``slots`` (one per sample).

        ``tokens`` is [batch, len(layers), len(offsets), dim], or [batch, len(layers), dim] for a one-column slot.
        One injection per LM at a time, since two would both write the slot: a nested one, or another
        adapter's on the same LM, is refused (``generate_mixed`` injects several adapters' tokens as one).
        """
        tokens = tokens[:, :, None] if tokens.ndim == 3 else tokens
        if tokens.shape[1:3] != (len(self.layers), len(self.offsets)):
            raise ValueError(f"expected {len(self.layers)} layers x {len(self.offsets)} tokens per sample, "
                             f"got {tuple(tokens.shape[1:3])}")
        if self._lm in _INJECTED_LMS:
            raise RuntimeError("this LM is already injecting another call's tokens; adapters sharing an LM "
                               "inject one at a time, or together through generate_mixed")
        write = _SlotWrite(tokens, slots, self.offsets)
        with ExitStack() as hooks:
            _INJECTED_LMS.add(self._lm)
            hooks.callback(_INJECTED_LMS.discard, self._lm)
            # First among the modules' pre-hooks, so that any other sees the layer input with the slot written.
            write.handles.append(self._lm.register_forward_pre_hook(write.track_chunk, with_kwargs=True, prepend=True))
            write.handles.append(self._lm.register_forward_hook(write.after_chunk))
            for position, block in enumerate(self._blocks):
                hook = write.overwrite_hook(position)
                write.handles.append(block.register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
            hooks.callback(write.retire)
            yield


class _SlotWrite:
    """One injection's tokens and slot columns, and the hooks that write them while it lasts.

    Which part of the slot lies in the chunk being computed is decided from the cache length seen by
    the model's top-level forward: prefill, chunked prefill (even one splitting the slot), beam search and
    assisted decoding then all behave. Once a forward that fills a KV cache has passed the slot's last
    column, the slot's keys and values are cached and no later step can need the hooks: they are removed,
    so decode steps run the plain decoder, which ``torch.compile`` can capture whole. Without a cache (training,
    full recomputation) every forward sees the slot, and the hooks stay until the injection ends.
    """

    def __init__(self, tokens: torch.Tensor, slots: torch.Tensor, offsets: tuple[int, ...]) -> None:
        self.tokens = tokens  # [batch, layers, len(offsets), dim]
        self.slots = slots  # [batch]: each row's first slot column
        self.offsets = torch.tensor(offsets, device=tokens.device)
        self.span = (int(slots.min()) + offsets[0], int(slots.max()) + offsets[-1] + 1)  # slot columns of any row
        self.chunk_start = 0
        self.chunk_end: int | None = None  # past the current chunk's last column, when a cache is filled
        self.handles: list[RemovableHandle] = []

    def track_chunk(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.chunk_start = chunk_start(kwargs)
        self.chunk_end = cached_chunk_end(args, kwargs, self.chunk_start)

    def after_chunk(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.chunk_end is not None and self.chunk_end >= self.span[1]:
            self.retire()

    def retire(self) -> None:
        """Remove every hook of this injection (again: removing a removed hook does nothing)."""
        for handle in self.handles:
            handle.remove()

    def overwrite_hook(self, position: int) -> Callable[[nn.Module, tuple, dict], tuple[tuple, dict] | None]:
        """The pre-hook of the ``position``-th injection layer: writes that layer's tokens into the slot."""
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            hidden = args[0] if args else kwargs["hidden_states"]
            start, length = self.chunk_start, hidden.shape[1]
            if self.span[0] >= start + length or self.span[1] <= start:  # no slot column in this chunk
                return None
            hidden = self._overwrite(hidden, self.tokens[:, position], start)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def _overwrite(self, hidden: torch.Tensor, tokens: torch.Tensor, chunk_start: int) -> torch.Tensor:
        """``hidden`` [batch, chunk, dim] with its rows' slot columns inside the chunk replaced by ``tokens``."""
        batch = hidden.shape[0]
        slots = self.slots.to(hidden.device)
        tokens = tokens.to(hidden.device, hidden.dtype)
        if tokens.shape[0] != batch:  # beam search / sampling expand the batch
            tokens = tokens.repeat_interleave(batch // tokens.shape[0], dim=0)
            slots = slots.repeat_interleave(batch // len(slots))
        columns = (slots - chunk_start)[:, None] + self.offsets.to(hidden.device)
        rows = torch.arange(batch, device=hidden.device)[:, None].expand_as(columns)
        if not (self.span[0] >= chunk_start and self.span[1] <= chunk_start + hidden.shape[1]):
            inside = (columns >= 0) & (columns < hidden.shape[1])  # a chunk that splits some row's slot or falls
            # between a composed slot's groups
            rows, columns, tokens = rows[inside], columns[inside], tokens[inside]
        # Out of place (index_put, not index_put_): the hidden state is needed unmodified by autograd.
        return hidden.index_put((rows, columns), tokens)


def cache_of(kwargs: dict) -> Cache | None:
    """The KV cache a top-level forward reads and fills, if any."""
    return kwargs.get("cache", kwargs.get("past_key_values"))


def chunk_start(kwargs: dict) -> int:
    """Column of the first position a top-level forward computes: what its KV cache already holds."""
    cache = cache_of(kwargs)
    return int(cache.get_seq_length()) if cache is not None else 0


def cached_chunk_end(args: tuple, kwargs: dict, start: int) -> int | None:
    """Past the last column a top-level forward computes, when it fills a KV cache (None otherwise)."""
    cache = cache_of(kwargs)
    inputs = kwargs.get("inputs_embeds")
    if inputs is None:
        inputs = kwargs.get("input_ids", args[0] if args else None)
    cached = cache is not None and kwargs.get("use_cache") is not False and inputs is not None
    return start + inputs.shape[1] if cached else None


@functools.cache
def _parameter_position(kind: type[nn.Module], name: str) -> int | None:
    """Where ``name`` stands among the arguments of a module class's forward, ``self`` not counted, if it does."""
    parameters = list(inspect.signature(kind.forward).parameters)[1:]
    return parameters.index(name) if name in parameters else None


# Modules that add learned absolute positions to the input embeddings: OPT's, and GPT-2's.
_ABSOLUTE_POSITIONS = ("embed_positions", "wpe")
# The attention implementations whose per-layer mask a hook can rewrite: a dense mask reaches each layer.
_DENSE_MASKS = ("sdpa", "eager")


class FrontInjector:
    """eP-ALM's official injection: one visual token in front of the whole sequence, from the first injection layer on.

    The official OPT (models/opt.py) concatenates the token in front of the hidden states at its first injection
    layer and replaces it at each later one; from there its attention row is open to every column (later text and
    padding included) and every row sees it. Here the sequence keeps one reserved column 0 from the input on, so
    that transformers' masks, positions and cache stay its own: before the first injection layer a hook hides that
    column from every other row (the token does not exist yet), from it on a hook opens the column's row to every
    column, and ``SlotInjector`` writes the layer's token there. Columns below ``unpositioned`` (the visual column
    and the soft prompt) get no position: the hook on an absolute position embedding zeroes theirs, and rotary LMs
    are given position 0 for them by the caller (a rotation by zero is none).

    The open row reads columns computed after it, so a KV cache holds it as it was at prefill: cached decoding is
    exact while no layer follows the last injection layer, and an approximation otherwise (``use_cache: false``
    recomputes the official function exactly). With ``open_row=False`` the row stays causal (it reads itself only),
    and cached decoding is exact.

    Once a forward that fills a KV cache has computed the whole prefix, every later query comes after column 0 and
    has a position: the hooks then give way to one per layer before the first injection layer that hides column 0
    from every query, reading neither the cache's length nor the chunk's start, so that each decode step traces
    as the same graph and ``torch.compile`` compiles it once.
    """

    def __init__(self, lm: nn.Module, layers: list[int], unpositioned: int, open_row: bool = True) -> None:
        implementation = lm.config._attn_implementation
        if implementation not in _DENSE_MASKS:
            raise ValueError(f"layout 'paper' rewrites each layer's attention mask: load the LM with attention "
                             f"{' or '.join(_DENSE_MASKS)}, not '{implementation}'")
        self._lm = lm
        blocks = decoder_layers(lm)
        # Where a decoder layer takes its mask (GPT-2 passes it positionally): looked up once, not in the hooks,
        # so that a compiled decode step traces none of the lookup.
        self._mask_position = _parameter_position(type(blocks[0]), "attention_mask")
        self._hidden_in = list(enumerate(blocks[:layers[0]]))  # (layer index, block)
        self._open_in = list(enumerate(blocks))[layers[0]:] if open_row else []  # a causal row needs no change
        self._slot = SlotInjector(lm, layers, (0,))
        self._positions = next((module for name, module in lm.named_modules()
                                if name.rsplit(".", 1)[-1] in _ABSOLUTE_POSITIONS), None)
        self.unpositioned = unpositioned
        self.layers = layers
        self._chunk = 0
        self._chunk_end: int | None = None  # past the chunk's last column, when it fills a KV cache
        self._cache: Cache | None = None
        self._handles: list[RemovableHandle] = []

    @contextmanager
    def injecting(self, tokens: torch.Tensor, slots: torch.Tensor) -> Iterator[None]:
        """Inject ``tokens`` [batch, len(layers), dim] at column 0 of every row (``slots``, all zero)."""
        with self._slot.injecting(tokens, slots), ExitStack() as hooks:
            hooks.callback(self._remove_hooks)
            self._handles = [self._lm.register_forward_pre_hook(self._track_chunk, with_kwargs=True),
                             self._lm.register_forward_hook(self._after_chunk)]
            self._handles += [block.register_forward_pre_hook(self._mask_hook(layer, open_row=False),
                                                              with_kwargs=True)
                              for layer, block in self._hidden_in]
            self._handles += [block.register_forward_pre_hook(self._mask_hook(layer, open_row=True), with_kwargs=True)
                              for layer, block in self._open_in]
            if self._positions is not None:
                self._handles.append(self._positions.register_forward_hook(self._drop_positions))
            yield

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _track_chunk(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """The chunk a top-level forward computes; and the attention mask that generate() drops when it holds no
        padding: without a cache and without a mask, transformers reads positions that restart (the text's, from 0
        after the unpositioned columns) as packed sequences, and masks each from the others."""
        self._chunk = chunk_start(kwargs)
        self._chunk_end = cached_chunk_end(args, kwargs, self._chunk)
        self._cache = cache_of(kwargs)
        if self._cache is not None or kwargs.get("attention_mask") is not None:
            return None
        inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            inputs = kwargs.get("input_ids", args[0] if args else None)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        return args, {**kwargs, "attention_mask": mask}

    def _after_chunk(self, module: nn.Module, args: tuple, output: object) -> None:
        """Past the cached prefix: the decode steps' hooks from now on."""
        if self._chunk_end is not None and self._chunk_end >= self.unpositioned:
            self._remove_hooks()
            self._handles = [block.register_forward_pre_hook(self._mask_hook(layer, open_row=False, decoding=True),
                                                             with_kwargs=True)
                             for layer, block in self._hidden_in]

    def _drop_positions(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """The position embeddings with those of the unpositioned columns in this chunk zeroed."""
        inside = self.unpositioned - self._chunk
        if inside <= 0:
            return None
        keep = torch.ones(output.shape[-2], 1, dtype=output.dtype, device=output.device)
        keep[:inside] = 0
        return output * keep

    def _mask_hook(self, layer: int, open_row: bool,
                   decoding: bool = False) -> Callable[[nn.Module, tuple, dict], tuple[tuple, dict] | None]:
        """The pre-hook of decoder layer ``layer`` that opens column 0's row (``open_row``) or hides column 0 from
        the later rows; ``decoding``: in a step after the cached prefix, where every query is a later row."""
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            hidden = args[0] if args else kwargs["hidden_states"]
            start, length = None if decoding else self._chunk, hidden.shape[1]
            if open_row and start > 0:  # the visual row was computed at prefill
                return None
            position = self._mask_position
            passed = position is not None and position < len(args)
            mask = args[position] if passed else kwargs.get("attention_mask")
            allowed = self._allowed(mask, start, length, layer, hidden.device)
            if open_row:
                allowed[:, :, 0, :] = True
            else:
                allowed[:, :, 0 if start is None else max(0, 1 - start):, 0] = False
            if mask is not None and mask.is_floating_point():  # eager attention adds the mask to its scores
                lowest = torch.finfo(mask.dtype).min
                allowed = torch.zeros(allowed.shape, dtype=mask.dtype, device=mask.device).masked_fill(~allowed, lowest)
            if passed:
                return (*args[:position], allowed, *args[position + 1:]), kwargs
            return args, {**kwargs, "attention_mask": allowed}

        return hook

    def _allowed(self, mask: torch.Tensor | None, start: int | None, length: int, layer: int,
                 device: torch.device) -> torch.Tensor:
        """Which keys each query of the chunk may read, [batch or 1, 1, length, keys], from layer ``layer``'s mask
        (a copy to rewrite). ``start``: the chunk's first column, or None in a decode step."""
        if mask is None:  # transformers leaves a purely causal mask to the kernel
            # As many keys as the layer's attention reads: a static cache's every position, the unwritten ones
            # after the chunk's last masked as the causal rule masks them. In a decode step the kernel leaves the
            # mask out only when the queries are the last keys.
            keys = start + length if self._cache is None else self._cache.get_mask_sizes(length, layer)[0]
            first = keys - length if start is None else start
            queries = torch.arange(first, first + length, device=device)
            return (torch.arange(keys, device=device)[None, :] <= queries[:, None])[None, None]
        if mask.dtype == torch.bool:
            return mask.clone()
        return mask > torch.finfo(mask.dtype).min / 2
