"""How far a decode step is from its memory floor, per LM weight format and batch.

A decode step of a small LM at a small batch reads every weight once and does little arithmetic with
each, so it cannot be faster than the weight bytes over the rate at which the memory delivers them: the
floor. The suite counts the bytes a step reads for each weight format (float32, bfloat16, int8 weight-only),
measures that rate in the same process with the read-bound kernel a step runs, a matrix-vector product
(read_rate), and times eP-ALM's greedy decode steps (slot injection on, answers forced to --new-tokens, prefill
left out). The ratio measured / floor says how much of a step is overhead around the weights rather than the
weights. A tensor copy would not do as the reference: it reads and writes every byte, so counting its bytes
once halves the rate and puts the floor at twice its height.

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
from torch import nn
from transformers import CompileConfig

from ..config import WEIGHT_FORMATS
from ..lm import hold_weights, loading_dtype, stored_bytes, weight_bytes_per_token
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


MATVEC_COLUMNS = 4096  # wide rows, so that the product is one long read
MATVEC_REPEATS = 10


@torch.inference_mode()
def matvec_bandwidth(device: str, weights: str, nbytes: int) -> float:
    """Bytes per second that a matrix-vector product reads from a matrix of about ``nbytes`` held as ``weights``
    (``hold_weights``: int8 runs its weight-only kernel on a float32 vector) on ``device``. The best of
    MATVEC_REPEATS after a warm-up: a busy moment only makes some repetitions slower."""
    dtype = loading_dtype(weights)
    rows = max(1, nbytes // (MATVEC_COLUMNS * (1 if weights == "int8" else dtype.itemsize)))
    layer = hold_weights(nn.Linear(MATVEC_COLUMNS, rows, bias=False, device=device, dtype=dtype), weights)
    vector = torch.ones(1, MATVEC_COLUMNS, device=device, dtype=dtype)
    seconds = Timer(device, MATVEC_REPEATS, warmup=1).best(lambda: layer(vector))
    return stored_bytes(layer.weight) / seconds


def read_rate(device: str, weights: str, nbytes: int) -> float:
    """Bytes per second that the memory delivers to a decode step over ``nbytes`` of weights held as ``weights``:
    the faster of a float32 matrix-vector product and one in the step's own format, each over a matrix of that
    many bytes, so that caches help them as much as they help the LM. A format whose own kernel reads slower
    than float32 (int8 weight-only, bf16 where the CPU emulates it) is held to what the memory allows, not to
    its kernel's pace."""
    return max(matvec_bandwidth(device, kind, nbytes) for kind in dict.fromkeys(("float32", weights)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    batch = examples("test", max(args.batches), args.limit)
    rows = []
    for weights in args.weights:
        model = build_model(args)
        hold_weights(model.lm, weights)
        features = model.encode(images(batch))
        read = weight_bytes_per_token(model.lm)
        bandwidth = read_rate(args.device, weights, read)
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
                         "weight_bytes_per_token": read, "read_bytes_per_second": bandwidth, "floor_ms": 1000 * floor,
                         "decode_ms_per_token": 1000 * step, "decode_over_floor": step / floor})
        del model, features
        gc.collect()
    print_table([{"LM weights": row["weights"], "batch": row["batch"], "KV cache": row["cache"],
                  "MB read / step": row["weight_bytes_per_token"] / 1e6,
                  "read GB/s": row["read_bytes_per_second"] / 1e9, "floor ms": row["floor_ms"],
                  "decode ms/token": row["decode_ms_per_token"], "decode / floor": row["decode_over_floor"]}
                 for row in rows],
                f"greedy decode steps ({args.new_tokens} new tokens, median of {args.repeats}) against the weights "
                f"read at the rate of the fastest matrix-vector product of as many bytes (best of {MATVEC_REPEATS})")
    return record("floor", args, {"rows": rows})
