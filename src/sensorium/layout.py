"""How an adapter lays out between its encoder and its LM, decided once from plain facts about the two.

Which encoder blocks the connector reads, which LM layers receive their tokens, in what width, how many
time steps per block, and which rows of the cached features hold the chosen blocks: the model decides it
from the loaded encoder and LM, the dry run from their configurations without a weight, and both by
calling ``plan`` on the same facts, so that what the dry run reports is what training builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PREFIX_PARTS, AdapterConfig
from .connectors import CONNECTORS, ConnectorSetup, connector_options, connector_type

# How the feature cache stores what an encoder gives: [CLS] tokens in float32; patch tokens, many per block, in
# bfloat16, which halves their size.
FEATURE_DTYPES = {"cls": "float32", "patches": "bfloat16"}


@dataclass(frozen=True)
class EncoderFacts:
    """An encoder as an adapter uses it: read from the loaded encoder, or from its configuration."""

    name: str
    blocks: int
    width: int
    tokens: str = "cls"  # what it gives of each block: "cls" or "patches" (encoders.base.TOKENS)
    patch_grid: tuple[int, int] | None = None  # rows x columns of the patch tokens, when it gives them
    frames: int | None = None  # tokens per block along time, one per video frame; None: no time axis


@dataclass(frozen=True)
class EncoderArchitecture:
    """An encoder model as published, before an adapter configures it (resolution, frames, tokens)."""

    parameters: int
    blocks: int
    width: int  # of its blocks' tokens
    patches: bool = False  # whether it gives patch tokens (an image vision transformer)
    patch_size: int | None = None  # a vision transformer's patch side, in pixels
    image_size: int | None = None  # its default input resolution


@dataclass(frozen=True)
class LMFacts:
    """A causal LM's shape: read from the loaded LM, its configuration, or its published architecture."""

    parameters: int
    layers: int  # decoder layers
    width: int  # hidden width of the decoder layers
    embedding_width: int  # width of the input embeddings (OPT-350m: narrower than its layers)
    kv_width: int  # per-token width of one layer's keys, and of its values


@dataclass(frozen=True)
class Layout:
    """Where an adapter's tokens come from and go."""

    placement: str  # "input" or "layers" (connectors.PLACEMENTS)
    blocks: tuple[int, ...]  # encoder blocks the connector reads, shallow first
    layers: tuple[int, ...]  # LM layers whose slot the tokens overwrite; none for input connectors
    layer_tokens: tuple[int, ...]  # for each injection layer, which of ``blocks`` it receives
    frames: int | None  # time steps per block the connector sees; None: averaged, or no time axis
    stored_blocks: tuple[int, ...] | None  # the blocks the feature cache keeps; None: every block
    feature_rows: tuple[int, ...]  # rows of the stored features that hold ``blocks``
    feature_shape: tuple[int, ...]  # of one media file's stored features
    feature_dtype: str  # of the stored features (FEATURE_DTYPES)
    setup: ConnectorSetup  # what the connector is built from


def _relative_range(first: int, stop: int, num_layers: int) -> list[int]:
    """Layers ``first`` to ``stop`` (exclusive) of OPT-2.7B's 32, scaled to an LM of ``num_layers``."""
    start = round(first * num_layers / 32)
    return list(range(start, max(round(stop * num_layers / 32), start + 1)))


def paper_layer_range(num_layers: int) -> list[int]:
    """The official eP-ALM injection layers: 0-based 19..30 of OPT-2.7B's 32 (``start_layer_idx: 19``,
    ``end_layer_idx: 31``), scaled to other depths."""
    return _relative_range(19, 31, num_layers)


def sensorium_layer_range(num_layers: int) -> list[int]:
    """Our layout's default: 0-based 18..29 of 32, one layer earlier than the paper's. Every adapter trained
    without ``inject_layers`` since the first release injects there, so the default stays."""
    return _relative_range(18, 30, num_layers)


def default_layer_range(layout: str, num_layers: int) -> list[int]:
    """The injection layers of an adapter that names none, by its layout (config.LAYOUTS)."""
    return paper_layer_range(num_layers) if layout == "paper" else sensorium_layer_range(num_layers)


def spread_blocks(num_tokens: int, num_layers: int) -> list[int]:
    """Which token each injection layer receives: consecutive layers share one, shallow first."""
    return [layer * num_tokens // num_layers for layer in range(num_layers)]


def paper_layer_tokens(num_tokens: int, num_layers: int) -> list[int]:
    """The official rule (models/opt.py): layer i of the injection range takes token i // step, step being
    layers // tokens (1 when there are no more layers than tokens), the last token serving any layer beyond.
    It equals ``spread_blocks`` when the tokens divide the layers (6 over 12)."""
    step = num_layers // num_tokens if num_layers > num_tokens else 1
    return [min(layer // step, num_tokens - 1) for layer in range(num_layers)]


def encoder_tokens(config: AdapterConfig) -> str:
    """What the adapter's encoder must give of each block: what its connector reads."""
    return connector_type(config.connector).tokens


def _blocks(config: AdapterConfig, encoder: EncoderFacts) -> tuple[list[int], list[str]]:
    """Injecting connectors: the last ``num_blocks`` blocks or ``encoder_blocks``; input connectors: one block."""
    if connector_type(config.connector).placement == "input":
        blocks = config.encoder_blocks or [encoder.blocks - 1]
    elif config.encoder_blocks is None and config.num_blocks > encoder.blocks:
        return [], [f"num_blocks={config.num_blocks} but encoder '{encoder.name}' has only {encoder.blocks} blocks"]
    else:
        blocks = config.encoder_blocks or list(range(encoder.blocks - config.num_blocks, encoder.blocks))
    if min(blocks) < 0 or max(blocks) >= encoder.blocks:
        return blocks, [f"encoder blocks {blocks} out of range 0..{encoder.blocks - 1}"]
    return blocks, []


def _layers(config: AdapterConfig, lm: LMFacts) -> tuple[list[int], list[str]]:
    """The LM layers whose slot the connector's tokens overwrite; none for input connectors."""
    if connector_type(config.connector).placement == "input":
        return [], []
    layers = config.inject_layers or default_layer_range(config.layout, lm.layers)
    if min(layers) < 0 or max(layers) >= lm.layers:
        return layers, [f"injection layers {layers} out of range 0..{lm.layers - 1}"]
    return layers, []


def _frames(config: AdapterConfig, encoder: EncoderFacts) -> tuple[int | None, list[str]]:
    """Time steps the connector sees per block: every frame (``frames``), mean and change (``change``: 2),
    or None when the frames are averaged (or the media is an image)."""
    if config.temporal == "mean":
        return None, []
    if encoder.frames is None:
        return None, [f"temporal '{config.temporal}' needs an encoder with one token per frame ('frames:NAME'); "
                      f"'{encoder.name}' gives one token per block"]
    return (2 if config.temporal == "change" else encoder.frames), []


def _token_problems(config: AdapterConfig, encoder: EncoderFacts) -> list[str]:
    reads = encoder_tokens(config)
    if encoder.tokens != reads:
        return [f"connector '{config.connector}' reads {reads} tokens; encoder '{encoder.name}' gives {encoder.tokens}"]
    return []


def setting_problems(config: AdapterConfig) -> list[str]:
    """What is wrong with the adapter's connector settings, whatever the models: its name, its options, and
    what its placement allows."""
    if config.connector not in CONNECTORS:
        return [f"unknown connector '{config.connector}'; available: {', '.join(sorted(CONNECTORS))}"]
    connector, found = CONNECTORS[config.connector], []
    unknown = sorted(set(config.connector_options) - set(connector_options(config.connector)))
    if unknown:
        known = ", ".join(connector_options(config.connector)) or "none"
        found.append(f"connector '{config.connector}' has no option {', '.join(unknown)}; its options: {known}")
    if config.temporal != "mean" and not connector.keeps_frames:
        keeping = ", ".join(name for name, kept in CONNECTORS.items() if kept.keeps_frames)
        found.append(f"temporal '{config.temporal}' needs the {keeping} connector: '{config.connector}' cannot keep "
                     "frames apart; use temporal: mean")
    if connector.placement == "input" and config.inject_layers:
        injecting = ", ".join(name for name, other in CONNECTORS.items() if other.placement == "layers")
        found.append(f"connector '{config.connector}' writes its tokens into the input: inject_layers applies to "
                     f"injecting connectors ({injecting})")
    if connector.placement == "input" and config.encoder_blocks is not None and len(config.encoder_blocks) != 1:
        found.append(f"connector '{config.connector}' reads one encoder block, not {config.encoder_blocks}")
    if config.layout == "paper" and (config.connector != "epalm" or config.temporal != "mean"):
        found.append(f"layout 'paper' is eP-ALM's one visual token per layer: it needs connector 'epalm' with "
                     f"temporal 'mean', not connector '{config.connector}' with temporal '{config.temporal}'")
    if config.layout != "paper" and config.visual_row != "open":
        found.append("visual_row applies to layout 'paper': our layout's slot row is causal")
    if config.layout == "paper" and config.column_order != list(PREFIX_PARTS):
        found.append("column_order applies to layout 'sensorium': the paper layout has its own order")
    return found


def _decide(config: AdapterConfig, encoder: EncoderFacts, lm: LMFacts) -> tuple[Layout | None, list[str]]:
    """The layout, or None with every problem. The models are judged only once the settings are sound."""
    found = setting_problems(config)
    if found:
        return None, found
    blocks, block_problems = _blocks(config, encoder)
    layers, layer_problems = _layers(config, lm)
    frames, frame_problems = _frames(config, encoder)
    found = _token_problems(config, encoder) + block_problems + layer_problems + frame_problems
    if found:
        return None, found
    connector = connector_type(config.connector)
    spread = paper_layer_tokens if config.layout == "paper" else spread_blocks
    layer_tokens = tuple(spread(len(blocks), len(layers)))
    # Injected tokens live in the decoder layers' width, which can differ from the embedding width
    # (OPT-350m projects 512-d embeddings to 1024-d layers); input tokens in the embeddings'.
    width = lm.width if layers else lm.embedding_width
    setup = ConnectorSetup(encoder.width, width, len(blocks), layer_tokens, encoder.patch_grid, frames,
                           config.token_norm, config.shared_linear)
    if connector.tokens == "patches":  # patch tokens are large: the cache keeps the chosen blocks' only
        stored, rows = tuple(blocks), tuple(range(len(blocks)))
        shape = (len(blocks), 1 + encoder.patch_grid[0] * encoder.patch_grid[1], encoder.width)
    else:  # [CLS] tokens are small: the cache keeps every block's, for any choice of blocks
        stored, rows = None, tuple(blocks)
        shape = (encoder.blocks, *(() if encoder.frames is None else (encoder.frames,)), encoder.width)
    return Layout(connector.placement, tuple(blocks), tuple(layers), layer_tokens, frames, stored, rows, shape,
                  FEATURE_DTYPES[connector.tokens], setup), []


def problems(config: AdapterConfig, encoder: EncoderFacts, lm: LMFacts) -> list[str]:
    """Every reason the adapter cannot lay out over these models (see ``_decide``); none when ``plan`` succeeds."""
    return _decide(config, encoder, lm)[1]


def plan(config: AdapterConfig, encoder: EncoderFacts, lm: LMFacts) -> Layout:
    """The adapter's layout over these models, or a one-line ValueError naming every problem."""
    layout, found = _decide(config, encoder, lm)
    if found:
        raise ValueError("; ".join(found))
    return layout


def kv_cache_bytes(lm: LMFacts, tokens: int, bytes_per_value: int) -> int:
    """Keys and values of ``tokens`` positions (all sequences together) over every decoder layer."""
    return 2 * lm.layers * lm.kv_width * tokens * bytes_per_value
