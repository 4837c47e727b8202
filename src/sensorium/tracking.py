"""What a training run records: experiment trackers (through Accelerate), a metrics log and curves.

Every logged value goes to three places: the selected Accelerate trackers (TensorBoard by default;
W&B and MLflow when installed and selected), ``metrics.jsonl`` in the run folder (one line per
record, flushed at once, so a crash loses nothing), and at the end ``curves.png``. Nothing here
waits on a network: W&B runs offline unless WANDB_MODE says otherwise, MLflow writes to its local
store unless MLFLOW_TRACKING_URI points elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import get_available_trackers

from .errors import BadInputError

logger = logging.getLogger(__name__)

# Trackers whose offline behaviour we set up; each is also the name of its PyPI package.
TRACKERS = ("tensorboard", "wandb", "mlflow")
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


def selected_trackers(names: list[str] | str) -> list[str]:
    """The recipe's ``training.trackers``, checked: a typo or a missing package is an error, not silence."""
    names = [names] if isinstance(names, str) else list(names)
    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"training.trackers: unknown tracker '{name}' (choose from {', '.join(TRACKERS)})")
        if name not in available:
            raise ValueError(f"training.trackers: '{name}' is selected but not installed (pip install {name})")
    if "wandb" in names:
        os.environ.setdefault("WANDB_MODE", "offline")  # `wandb sync` uploads later, if wanted
    return names


def tracker_options(out: Path) -> dict[str, dict[str, Any]]:
    """Per-tracker init arguments: W&B and MLflow runs are named after the run folder."""
    return {"wandb": {"name": out.name, "dir": str(out)}, "mlflow": {"run_name": out.name}}


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe as flat ``section.key`` hyperparameters of the types every tracker accepts."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class MetricsLog:
    """``metrics.jsonl``: one JSON object per record, ``{"step": n, "train/loss": ..., ...}``.

    A resumed run keeps the records up to the step it resumes from and drops the later ones that
    the interrupted run wrote, so every step appears once. Given ``records``, the count the log held
    when the checkpoint was saved, it keeps exactly those: a run resumed at its last step then drops
    the final evaluation recorded after that checkpoint, which it records again. A fresh run
    (``resumed_step`` None) replaces the earlier run's log without reading it: nothing of that run,
    damaged or not, is its business.
    """

    def __init__(self, out: Path, resumed_step: int | None, records: int | None = None) -> None:
        self.path = out / METRICS_NAME
        earlier = read_metrics(self.path) if resumed_step is not None else []
        kept = [r for r in earlier if r["step"] <= resumed_step][:records]
        out.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.records = len(kept)

    def write(self, step: int, values: dict[str, float]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        self.records += 1


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log. A final line that is not a record was torn by a crash while it was
    written: it is dropped with a warning. Any other line that is not a record is an error naming it."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_bytes().decode(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            if number < len(lines):
                raise BadInputError(f"{path}: line {number} is not a metrics record")
            logger.warning("%s: dropping its last line, torn by a crash while it was written: %.60s", path, line)
            break
        records.append(record)
    return records


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing, so the start is not pulled to zero."""
    average, result = 0.0, []
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        result.append(average / (1 - weight**count))
    return result


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Training loss (raw and smoothed) and every ``eval/*`` metric against the step, as a PNG."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display, no pyplot state

    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axes, eval_axes = figure.subplots(1, 2)
    steps = [r["step"] for r in records if "train/loss" in r]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    loss_axes.plot(steps, losses, alpha=0.35, label="loss")
    loss_axes.plot(steps, smoothed(losses), label="smoothed (EMA 0.9)")
    loss_axes.set(title="training loss (target tokens)", xlabel="step", ylabel="cross-entropy")
    loss_axes.legend()
    metrics = sorted({key for r in records for key in r if key.startswith("eval/")})
    for key in metrics:
        points = [(r["step"], r[key]) for r in records if key in r]
        eval_axes.plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("eval/"))
    eval_axes.set(title="validation", xlabel="step", xlim=loss_axes.get_xlim())
    if metrics:
        eval_axes.legend()
    else:
        eval_axes.text(0.5, 0.5, "no evaluation during this run", ha="center", va="center",
                       transform=eval_axes.transAxes)
    figure.savefig(path, dpi=100)
