"""One short run for a lent accelerator: training and generation throughput at batch 64, with the ratios.

The other suites' measurements at a GPU-sized batch, in the precision training uses (bf16 where the
GPU has it). ``--smoke`` shrinks everything so that the same code path runs on a CPU in the tests.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from . import generation, training
from .common import Timer, add_common_arguments, build_model, print_table, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="questions per step and per generate()")
    parser.add_argument("--new-tokens", type=int, default=10, help="exact answer length (greedy)")
    parser.add_argument("--smoke", action="store_true", help="batch 2, 2 new tokens, 1 repeat, no warm-up")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        args.batch_size, args.new_tokens, args.repeats, args.warmup = 2, 2, 1, 0
    model = build_model(args)
    timer = Timer(args.device, args.repeats, args.warmup)
    steps = training.measure(model, training.prepare(model, args.batch_size, args.limit), timer, args.device)
    model.eval()
    if torch.device(args.device).type == "cuda":
        model.lm.to(torch.bfloat16)  # inference weights in bf16 once, instead of autocast at every token
    inputs = generation.prepare(model, args.batch_size, args.limit)
    generated = generation.measure(model, inputs, args.new_tokens, 1, timer, args.device)
    tokens = args.batch_size * args.new_tokens
    throughput = {f"{name}_tokens_per_s": tokens / (generated[f"{name}_ms"] / 1000)
                  for name in ("epalm", "nocache", "lm", "allpatch")}
    generated.update(throughput)
    _print(steps, generated)
    return record("gpu", args, {"training": steps, "generation": generated})


def _print(steps: dict[str, Any], generated: dict[str, Any]) -> None:
    print_table([
        {"measure": "train examples/s, cached features", "value": steps["cached_examples_per_s"]},
        {"measure": "train step encoder-inside / cached", "value": steps["encoder_over_cached"]},
        {"measure": "train step cached / LM floor", "value": steps["cached_over_lm"]},
        {"measure": "generate tokens/s, eP-ALM", "value": generated["epalm_tokens_per_s"]},
        {"measure": "generate no-cache / cached", "value": generated["nocache_over_epalm"]},
        {"measure": "generate eP-ALM / LM alone", "value": generated["epalm_over_lm"]},
        {"measure": "generate all-patch / eP-ALM", "value": generated["allpatch_over_epalm"]},
    ], f"accelerator run, batch {steps['batch']}")
