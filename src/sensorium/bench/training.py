"""Training-step cost of eP-ALM: the feature cache's saving, the distance to the frozen LM's floor, memory.

A step is what the training loop does per batch: model forward (loss), backward, AdamW step, zero_grad.
The floor is a forward + backward of the frozen LM alone on the same token layout with gradients
reaching the input embeddings, as eP-ALM's soft prompt needs: no connector, no injection, no optimizer.
"""

from __future__ import annotations

import argparse
import resource
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import Example
from ..model import PerceptualLM
from ..recipe import TrainingOptions
from ..train import build_optimizer
from .common import Timer, add_common_arguments, autocast, build_model, examples, images, print_table, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=TrainingOptions.batch_size, help="questions per step")


@dataclass
class Batch:
    """One training batch of easy-vqa train questions and the features the cache would hold for it."""

    examples: list[Example]
    features: torch.Tensor

    @property
    def questions(self) -> list[str]:
        return [example.question for example in self.examples]

    @property
    def answers(self) -> list[str]:
        return [example.answers[0] for example in self.examples]


def prepare(model: PerceptualLM, batch_size: int, limit: int | None) -> Batch:
    """Features of the batch computed once, kept on the CPU as the feature cache hands them out."""
    batch = examples("train", batch_size, limit)
    return Batch(batch, _features(model, batch).cpu())


def _features(model: PerceptualLM, batch: list[Example]) -> torch.Tensor:
    """Load, preprocess and encode: what the cache saves every step after the first epoch."""
    return model.encode(images(batch))


def step(model: PerceptualLM, optimizer: torch.optim.Optimizer, features: torch.Tensor, batch: Batch) -> None:
    loss = model(features, batch.questions, batch.answers)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def lm_floor(model: PerceptualLM, batch: Batch) -> None:
    """Forward + backward of the frozen LM on the step's `[prompt][slot][text]` layout, logits only where scored."""
    answers = model.target_ids(batch.answers)
    embeds, mask = model._embed([p + a for p, a in zip(model.prompt_ids(batch.questions), answers, strict=True)])
    span = max(len(a) for a in answers)
    labels = torch.tensor([[-100] * (span - len(a)) + a for a in answers], device=embeds.device)
    logits = model.lm(inputs_embeds=embeds.detach().requires_grad_(), attention_mask=mask,
                      position_ids=model.positions(mask), logits_to_keep=model.last_positions(span + 1),
                      use_cache=False).logits[:, :-1]
    nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()).backward()


def time_steps(model: PerceptualLM, optimizer: torch.optim.Optimizer, batch: Batch, timer: Timer,
               device: str) -> dict[str, float]:
    """Seconds per step with cached features, with the encoder inside the step, and of the LM floor."""
    model.train()
    with autocast(device):
        return {
            "cached": timer.median(lambda: step(model, optimizer, batch.features, batch)),
            "encoder": timer.median(lambda: step(model, optimizer, _features(model, batch.examples), batch)),
            "lm": timer.median(lambda: lm_floor(model, batch)),
        }


def _bytes(tensors) -> int:
    return sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))


def memory(model: PerceptualLM, optimizer: torch.optim.Optimizer, batch: Batch, device: str) -> dict[str, Any]:
    """Peak memory against the frozen weights, and gradient + AdamW state against the trainable parameters.

    Both must be what the trainable parameters alone imply (1x and 2x their bytes): a frozen weight
    that kept a gradient or an optimizer slot would show here.
    """
    with autocast(device):
        model(batch.features, batch.questions, batch.answers).backward()
    grads = _bytes(p.grad for p in model.parameters())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    trainable = _bytes(model.trainable_parameters())
    frozen = _bytes(p for p in model.parameters() if not p.requires_grad)
    state = _bytes(value for slots in optimizer.state.values() for value in slots.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    result = {"trainable_params": sum(p.numel() for p in model.trainable_parameters()),
              "trainable_bytes": trainable, "frozen_weight_bytes": frozen, "grad_bytes": grads,
              "optimizer_state_bytes": state, "peak_rss_bytes": peak,
              "grad_over_trainable": grads / trainable, "optimizer_state_over_trainable": state / trainable,
              "peak_rss_over_frozen": peak / frozen}
    if torch.device(device).type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        result["peak_cuda_over_frozen"] = result["peak_cuda_bytes"] / frozen
    return result


def measure(model: PerceptualLM, batch: Batch, timer: Timer, device: str) -> dict[str, Any]:
    optimizer = build_optimizer(model, TrainingOptions())
    seconds = time_steps(model, optimizer, batch, timer, device)
    size = len(batch.examples)
    return {
        "batch": size, **{f"{name}_ms": 1000 * value for name, value in seconds.items()},
        **{f"{name}_examples_per_s": size / value for name, value in seconds.items()},
        "encoder_over_cached": seconds["encoder"] / seconds["cached"],
        "cached_over_lm": seconds["cached"] / seconds["lm"],
        "memory": memory(model, optimizer, batch, device),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = build_model(args)
    result = measure(model, prepare(model, args.batch_size, args.limit), Timer(args.device, args.repeats, args.warmup),
                     args.device)
    labels = {"cached": "eP-ALM step, cached features", "encoder": "eP-ALM step, encoder inside",
              "lm": "frozen LM alone, fwd+bwd"}
    print_table([{"run": label, "ms": result[f"{name}_ms"], "examples/s": result[f"{name}_examples_per_s"]}
                 for name, label in labels.items()], f"training step, batch {result['batch']}")
    print_table([{"ratio": "encoder inside / cached features", "value": result["encoder_over_cached"]},
                 {"ratio": "cached features / LM floor (target <=1.15)", "value": result["cached_over_lm"]}],
                "training step ratios")
    print_table([{"quantity": name, "value": value} for name, value in result["memory"].items()], "training memory")
    return record("training", args, result)
