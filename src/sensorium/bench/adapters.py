"""Decode cost of one request against the number of adapters loaded over the same frozen LM.

A server holds many adapters (PerceptualLM objects) over one shared LM and answers a request with one
of them; the others must cost that request nothing. One greedy request (batch 1, an easy-vqa test
question, exactly --new-tokens tokens) is decoded by the first adapter of each group, the groups
timed in turn at every repetition, in alternate order, so that a busy machine slows them alike.
A group is --adapters freshly initialised adapters sharing one LM (decoding does not depend on the
weights); each group has its own LM. Decode ms/token is the time from the first new token's scores
to the last one's over the tokens between, so the prefill is left out; the table also counts the
forward hooks on the LM and its decoder layers between requests.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from torch import nn

from ..injection import decoder_layers
from ..model import PerceptualLM
from .common import (
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
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 16],
                        help="adapters per shared LM, one group each; the ratio is the last over the first")
    parser.add_argument("--new-tokens", type=int, default=16, help="exact answer length (at least 2)")


def adapter_group(args: argparse.Namespace, count: int) -> list[PerceptualLM]:
    """``count`` adapters over one newly loaded LM, sharing its tokenizer and the first adapter's encoder."""
    lead = build_model(args)
    others = [PerceptualLM(lead.config, lm=lead.lm, tokenizer=lead.tokenizer, encoder=lead.encoder)
              for _ in range(count - 1)]
    return [lead, *(model.to(args.device).eval() for model in others)]


def idle_hooks(lm: nn.Module) -> int:
    """Forward hooks on the LM and its decoder layers outside any request: each runs at every forward."""
    modules = [lm, *decoder_layers(lm)]
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in modules)


def run(args: argparse.Namespace) -> dict[str, Any]:
    groups = {count: adapter_group(args, count) for count in args.adapters}
    example = examples("test", 1, args.limit)[0]
    features = groups[args.adapters[0]][0].encode(images([example]))
    times: dict[int, list[float]] = {count: [] for count in groups}
    for repetition in range(args.warmup + args.repeats):
        turn = list(groups.items())
        for count, group in turn[::-1] if repetition % 2 else turn:  # neither group always goes first
            seconds = decode_seconds_per_token(group[0], features, [example.question], args.new_tokens)
            if repetition >= args.warmup:
                times[count].append(seconds)
    rows = [{"adapters": count, "idle_hooks": idle_hooks(group[0].lm),
             "decode_ms_per_token": 1000 * statistics.median(times[count])} for count, group in groups.items()]
    first, last = rows[0], rows[-1]
    ratio = {"many_over_one_decode_ms_per_token": last["decode_ms_per_token"] / first["decode_ms_per_token"]}
    print_table([{"adapters on the LM": row["adapters"], "idle hooks": row["idle_hooks"],
                  "decode ms/token": row["decode_ms_per_token"]} for row in rows],
                f"one request, greedy, {args.new_tokens} new tokens, median of {args.repeats}")
    print_table([{"ratio": f"{last['adapters']} adapters / {first['adapters']}",
                  "value": ratio["many_over_one_decode_ms_per_token"]}], "adapter overhead")
    return record("adapters", args, {"rows": rows, **ratio})
