"""Compiled decoding in shape buckets (decoding.py) against eager decoding and the bare LM, on the device at hand.

Per batch: the warm-up, the first request of a bucket (its compile) less a request once compiled; the compiles a
second request of the same bucket (other questions, another answer length) triggers, which the buckets keep at
0; and the steady decode step (prefill left out, answers forced to ``--new-tokens``) of eP-ALM eager (dynamic KV
cache, today's default) and compiled, and of the bare LM on the same text prompts, eager and compiled. The ratios
say what compiling buys (eager / compiled) and what eP-ALM costs over its LM either way (target <= 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo
from transformers import LogitsProcessorList

from ..decoding import CompiledDecoding, batch_bucket, padded_rows
from ..model import PerceptualLM
from .common import StepClock, Timer, add_common_arguments, build_model, examples, images, print_table, record
from .generation import text_prompt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="questions decoded together")
    parser.add_argument("--new-tokens", type=int, default=32, help="exact answer length (at least 3)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: trace only)")
    parser.add_argument("--mode", default="reduce-overhead", help="torch.compile mode (reduce-overhead: CUDA graphs)")


def step_seconds(generate: Callable[[LogitsProcessorList], Any]) -> float:
    """Mean decode step of one call of ``generate`` (given the logits processors to pass on): the gaps between
    the arrivals of the new tokens' scores, the prefill before the first left out."""
    clock = StepClock()
    generate(LogitsProcessorList([clock]))
    return (clock.stamps[-1] - clock.stamps[0]) / (len(clock.stamps) - 1)


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


class Requests:
    """One batch of easy-vqa questions as eP-ALM and the bare LM read them, and how each decodes them."""

    def __init__(self, model: PerceptualLM, batch: int, limit: int | None, new_tokens: int,
                 decoding: CompiledDecoding) -> None:
        chosen = examples("test", batch, limit)
        self.model, self.decoding = model, decoding
        self.features = model.encode(images(chosen))
        self.questions = [example.question for example in chosen]
        self.ids, self.mask = text_prompt(model, self.questions)
        self.options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "num_beams": 1}

    def epalm(self, compiled: bool, processors: LogitsProcessorList | None = None, **options) -> list[str]:
        extra = {"compiled": self.decoding} if compiled else {}
        return self.model.generate(self.features, self.questions, logits_processor=processors,
                                   **{**self.options, **options, **extra})

    def lm(self, compiled: bool, processors: LogitsProcessorList | None = None) -> torch.Tensor:
        """The bare LM on the same text, compiled as eP-ALM is: batch and static cache in their buckets."""
        options = self.model.generation_options(self.questions, **self.options)
        if not compiled:
            return self.model.lm.generate(input_ids=self.ids, attention_mask=self.mask, logits_processor=processors,
                                          **options)
        rows = batch_bucket(len(self.ids))
        ids, mask = padded_rows(self.ids, rows), padded_rows(self.mask, rows)
        context = getattr(self.model.lm.config, "max_position_embeddings", None)
        options.update(self.decoding.generate_options(ids.shape[1] + options["max_new_tokens"], context))
        with self.decoding.compiling():
            return self.model.lm.generate(input_ids=ids, attention_mask=mask, logits_processor=processors, **options)


def warm_up(requests: Requests, timer: Timer) -> dict[str, float]:
    """The first compiled request of the batch's bucket, its compiles, and those of a second request of the same
    bucket (the questions reversed, one token fewer)."""
    graphs = compiled_graphs()
    started = time.perf_counter()
    requests.epalm(compiled=True)
    first = time.perf_counter() - started
    compiles = compiled_graphs() - graphs
    steady = timer.median(lambda: requests.epalm(compiled=True))
    graphs = compiled_graphs()
    requests.questions.reverse()
    requests.epalm(compiled=True, max_new_tokens=requests.options["max_new_tokens"] - 1,
                   min_new_tokens=requests.options["min_new_tokens"] - 1)
    requests.questions.reverse()
    return {"first_request_s": first, "compiled_request_s": steady, "warmup_s": first - steady,
            "compiles": compiles, "compiles_in_same_bucket": compiled_graphs() - graphs}


def steady_steps(requests: Requests, timer: Timer) -> dict[str, float]:
    """Seconds per decode step of each way to decode the batch: the median of ``timer.repeats`` calls after
    ``timer.warmup`` untimed ones, the four ways taking turns, so that a busy moment of the machine slows them
    alike rather than the one it falls on."""
    runs: dict[str, Callable[[LogitsProcessorList], Any]] = {
        "epalm_eager": lambda clock: requests.epalm(compiled=False, processors=clock),
        "epalm_compiled": lambda clock: requests.epalm(compiled=True, processors=clock),
        "lm_eager": lambda clock: requests.lm(compiled=False, processors=clock),
        "lm_compiled": lambda clock: requests.lm(compiled=True, processors=clock)}
    for _ in range(timer.warmup):
        for run in runs.values():
            step_seconds(run)
    steps: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(timer.repeats):
        for name, run in runs.items():
            steps[name].append(step_seconds(run))
    return {name: statistics.median(seconds) for name, seconds in steps.items()}


@torch.inference_mode()
def measure(model: PerceptualLM, batch: int, args: argparse.Namespace, decoding: CompiledDecoding) -> dict[str, Any]:
    requests = Requests(model, batch, args.limit, args.new_tokens, decoding)
    timer = Timer(args.device, args.repeats, args.warmup)
    warm = warm_up(requests, timer)
    steps = steady_steps(requests, timer)
    return {"batch": batch, "batch_bucket": batch_bucket(batch), "new_tokens": args.new_tokens, **warm,
            **{f"{name}_ms_per_token": 1000 * seconds for name, seconds in steps.items()},
            "compiled_tokens_per_s": batch / steps["epalm_compiled"],
            "eager_tokens_per_s": batch / steps["epalm_eager"],
            "eager_over_compiled": steps["epalm_eager"] / steps["epalm_compiled"],
            "epalm_over_lm_compiled": steps["epalm_compiled"] / steps["lm_compiled"],
            "epalm_over_lm_eager": steps["epalm_eager"] / steps["lm_eager"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.new_tokens < 3:
        raise ValueError("at least 3 new tokens: the second request of a bucket answers one fewer, in steps")
    model = build_model(args)
    decoding = CompiledDecoding(backend=args.backend, mode=args.mode)
    torch._dynamo.reset()  # every bucket compiles in this run, none before it
    rows = [measure(model, batch, args, decoding) for batch in args.batches]
    print_table([{"batch": row["batch"], "bucket": row["batch_bucket"], "compiles": row["compiles"],
                  "again": row["compiles_in_same_bucket"], "warm-up s": row["warmup_s"],
                  "eager ms/token": row["epalm_eager_ms_per_token"],
                  "compiled ms/token": row["epalm_compiled_ms_per_token"],
                  "LM eager": row["lm_eager_ms_per_token"], "LM compiled": row["lm_compiled_ms_per_token"],
                  "eager/compiled": row["eager_over_compiled"],
                  "epalm/LM compiled (<=1.10)": row["epalm_over_lm_compiled"],
                  "epalm/LM eager": row["epalm_over_lm_eager"]} for row in rows],
                f"decode steps ({args.new_tokens} new tokens, median of {args.repeats}), compiled with "
                f"{args.backend}/{args.mode} in shape buckets; warm-up: a bucket's first request less a compiled one")
    return record("compile", args, {"rows": rows})
