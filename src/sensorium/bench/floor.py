"""How far a decode step is from its memory floor, per LM weight format and batch.

A decode step of a small LM at a small batch reads every weight once and does little arithmetic with
each, so it cannot be faster than the weight bytes over the memory bandwidth: the floor. The suite
measures the bandwidth in the same process (a large tensor copy, bytes copied per second), counts the
bytes a step reads for each weight format (float32, bfloat16, int8 weight-only), and times eP-ALM's
greedy decode steps (slot injection on, answers forced to --new-tokens, prefill left out). The ratio
measured / floor says how much of a step is overhead around the weights rather than the weights.

``--caches dynamic static`` times both KV caches; ``--compile`` compiles the decode step (transformers'
``compile_config``, on every device), which needs the static cache.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
from typing import Any

import torch
from transformers import CompileConfig

from ..config import WEIGHT_FORMATS
from ..lm import hold_weights, weight_bytes_per_token
from .common import (
    Timer,
    add_common_arguments,
    build_model,
    decode_seconds_per_token,
    examples,
    images,
    print_table,
    record,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--weights", nargs="+", choices=WEIGHT_FORMATS, default=["float32", "bfloat16", "int8"],
                        help="formats of the frozen LM's weights to measure")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="questions decoded together")
    parser.add_argument("--new-tokens", type=int, default=16, help="exact answer length (at least 2)")
    parser.add_argument("--copy-mib", type=int, default=512, help="size of the tensor copied to measure bandwidth")
    parser.add_argument("--caches", nargs="+", choices=("dynamic", "static"), default=["dynamic"],
                        help="KV caches to time: grown per step (dynamic) or allocated once (static)")
    parser.add_argument("--compile", action="store_true", help="compile the decode step (static cache only)")


def cache_options(cache: str, compiled: bool) -> dict[str, Any]:
    """generate() options of a KV cache; a compiled decode step on any device, where transformers compiles only
    on accelerators by default."""
    if cache == "dynamic":
        if compiled:
            raise ValueError("--compile needs the static cache: a dynamic one changes shape at every step")
        return {}
    if not compiled:
        return {"cache_implementation": "static", "disable_compile": True}
    config = CompileConfig(mode="default")
    config._compile_all_devices = True  # transformers' switch for compiling on CPUs too
    return {"cache_implementation": "static", "compile_config": config}


def copy_bandwidth(device: str, mebibytes: int, timer: Timer) -> float:
    """Bytes per second that a tensor copy moves on ``device`` (each byte counted once, as a weight is read)."""
    source = torch.ones(mebibytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    seconds = timer.median(lambda: target.copy_(source))
    return source.numel() * source.element_size() / seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    timer = Timer(args.device, args.repeats, args.warmup)
    bandwidth = copy_bandwidth(args.device, args.copy_mib, timer)
    batch = examples("test", max(args.batches), args.limit)
    rows = []
    for weights in args.weights:
        model = build_model(args)
        hold_weights(model.lm, weights)
        features = model.encode(images(batch))
        read = weight_bytes_per_token(model.lm)
        floor = read / bandwidth
        for size, cache in itertools.product(args.batches, args.caches):
            questions = [example.question for example in batch[:size]]
            options = cache_options(cache, args.compile and cache == "static")
            for _ in range(args.warmup):
                decode_seconds_per_token(model, features[:size], questions, args.new_tokens, **options)
            step = statistics.median(decode_seconds_per_token(model, features[:size], questions, args.new_tokens,
                                                              **options) for _ in range(args.repeats))
            rows.append({"weights": weights, "batch": size, "cache": cache + (" compiled" if "compile_config" in options
                                                                              else ""),
                         "weight_bytes_per_token": read, "floor_ms": 1000 * floor,
                         "decode_ms_per_token": 1000 * step, "decode_over_floor": step / floor})
        del model, features
        gc.collect()
    print_table([{"LM weights": row["weights"], "batch": row["batch"], "KV cache": row["cache"],
                  "MB read / step": row["weight_bytes_per_token"] / 1e6, "floor ms": row["floor_ms"],
                  "decode ms/token": row["decode_ms_per_token"], "decode / floor": row["decode_over_floor"]}
                 for row in rows],
                f"greedy decode steps ({args.new_tokens} new tokens, median of {args.repeats}) against the weights "
                f"read over {bandwidth / 1e9:.1f} GB/s copied")
    return record("floor", args, {"copy_bytes_per_second": bandwidth, "rows": rows})
