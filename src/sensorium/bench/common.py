"""What every suite shares: the timer, the model under test, the machine record, the table and the JSON line."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from ..config import AdapterConfig
from ..data import Example, read_dataset
from ..encoders import load_encoder
from ..media import load_image
from ..model import PerceptualLM
from ..train import mixed_precision


def add_common_arguments(parser: argparse.ArgumentParser, repeated: bool = True) -> None:
    """Options of every suite; model options exist so that tests can point at tiny models.

    ``repeated``: the suite times repetitions of a call (all but the load test, which runs for a time).
    """
    parser.add_argument("--lm", default="smollm2-135m", help="packaged name, folder or hub id of the frozen LM")
    parser.add_argument("--encoder", default="dinov2-small", help="packaged name or folder of the frozen encoder")
    parser.add_argument("--image-size", type=int, default=112, help="encoder input resolution (the recipe's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    if repeated:
        parser.add_argument("--repeats", type=int, default=5, help="timed repetitions; the median is reported")
        parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--limit", type=int, default=None, help="use a seeded sample of this many easy-vqa questions")
    parser.add_argument("--results", type=Path, default=Path("bench/results.jsonl"), help="JSON lines appended here")


class Timer:
    """Median or best wall time of a call after warm-up runs; waits for the GPU so that queued kernels count."""

    def __init__(self, device: str, repeats: int, warmup: int) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.repeats, self.warmup = repeats, warmup

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def median(self, call: Callable[[], Any]) -> float:
        """Seconds per call: the typical one."""
        return statistics.median(self._times(call))

    def best(self, call: Callable[[], Any]) -> float:
        """Seconds of the fastest call: what the hardware allows, when other work may slow some calls down."""
        return min(self._times(call))

    def _times(self, call: Callable[[], Any]) -> list[float]:
        for _ in range(self.warmup):
            call()
        times = []
        for _ in range(self.repeats):
            self._sync()
            started = time.perf_counter()
            call()
            self._sync()
            times.append(time.perf_counter() - started)
        return times


def precision() -> str:
    """The mixed precision that training would use on this machine."""
    return mixed_precision("auto")


def autocast(device: str) -> AbstractContextManager:
    """Autocast as training's Accelerator applies it, so timings are those of real runs."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision())
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype else nullcontext()


def build_model(args: argparse.Namespace) -> PerceptualLM:
    """An untrained eP-ALM (timing does not depend on the weights) reading the paper's 6 blocks, or all of fewer."""
    encoder = load_encoder(args.encoder, image_size=args.image_size)
    config = AdapterConfig(lm=args.lm, encoder=args.encoder, image_size=args.image_size,
                           num_blocks=min(AdapterConfig.num_blocks, encoder.num_blocks))
    torch.manual_seed(0)
    return PerceptualLM(config, encoder=encoder).to(args.device).eval()


class StepClock(LogitsProcessor):
    """Notes when each new token's scores arrive: the gaps between the notes are decode steps."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.is_cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def decode_seconds_per_token(model: PerceptualLM, features: torch.Tensor, questions: list[str],
                             new_tokens: int, **options) -> float:
    """Mean decode step of a greedy batch of exactly ``new_tokens`` tokens: the prefill ends where the first new
    token's scores arrive, and each later arrival closes one step. ``options`` go to generate()."""
    if new_tokens < 2:
        raise ValueError("at least 2 new tokens: decode steps are the gaps between them")
    clock = StepClock()
    model.generate(features, questions, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1,
                   logits_processor=LogitsProcessorList([clock]), **options)
    return (clock.stamps[-1] - clock.stamps[0]) / (len(clock.stamps) - 1)


def examples(split: str, count: int, limit: int | None) -> list[Example]:
    """``count`` easy-vqa questions, cycling through a ``limit``-sized sample when it is smaller."""
    pool = read_dataset({"format": "easy-vqa", "split": split, "limit": limit})
    return [pool[i % len(pool)] for i in range(count)]


def images(batch: list[Example]) -> list[Image.Image]:
    return [load_image(example.media) for example in batch]


def machine(device: str) -> dict[str, Any]:
    """Enough to tell two results files apart: CPU model, threads, GPU, library versions."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    cuda = torch.device(device).type == "cuda"
    return {"cpu": names[0] if names else platform.processor(), "cpu_count": len(names) or None,
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name() if cuda else None,
            "device": device, "precision": precision(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def _cell(value: Any) -> str:
    """Three significant digits for small figures, whole numbers with separators for large ones."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """Rows of one dict each, columns in the first row's key order, right-aligned."""
    headers = list(rows[0])
    cells = [[_cell(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    for line in [headers, *cells]:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))


def record(suite: str, args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """One JSON line per run, appended: earlier runs (other machines, other commits) stay comparable."""
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in {"suite", "run"}}
    line = {"suite": suite, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(args.device), "settings": settings, **results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    print(f"\nappended to {args.results}")
    return line
