"""The comparison's report: a markdown table of score and costs, each relative to the baseline, and a plot
of score against inference cost; for methods over several frozen LMs (a ladder), a plot of score against the
LM's size."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def write_report(summary: dict[str, Any], folder: Path) -> str:
    """comparison.json, comparison.md and comparison.png in ``folder``; returns the markdown table."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown_table(summary)
    (folder / "comparison.md").write_text(table)
    plot(summary, folder / "comparison.png")
    if len({result["lm"] for result in summary["methods"]}) > 1:
        plot_ladder(summary, folder / "ladder.png")
    return table


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _size(count: float) -> str:
    return f"{count / 2**20:.2f} MB" if count >= 2**20 else f"{count / 2**10:.1f} KB"


def markdown_table(summary: dict[str, Any]) -> str:
    metric, baseline = summary["metric"], summary["baseline"]
    header = (f"| method | lr (grid) | {metric} (mean ± std, {len(summary['seeds'])} seeds) | vs {baseline} | "
              "trainable params | adapter size | training time | latency / sample | KV cache / sample | "
              "slot columns |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for result in summary["methods"]:
        relative = result["relative"]
        grid = ", ".join(f"{lr:g}" for lr in result["lr_grid"])
        lines.append(
            f"| {result['name']} | **{result['chosen_lr']:g}** ({grid}) | "
            f"{result['score_mean']:.2f} ± {result['score_std']:.2f} | {relative['score_delta']:+.2f} | "
            f"{result['trainable_parameters']:,} ({_ratio(relative['trainable_parameters'])}) | "
            f"{_size(result['adapter_bytes'])} ({_ratio(relative['adapter_bytes'])}) | "
            f"{result['train_seconds']:.1f} s ({_ratio(relative['train_seconds'])}) | "
            f"{result['latency_ms_per_sample']:.1f} ms ({_ratio(relative['latency_ms_per_sample'])}) | "
            f"{_size(result['kv_bytes_per_sample'])} ({_ratio(relative['kv_bytes_per_sample'])}) | "
            f"{result['slot_columns']} |")
    notes = (f"\n{summary['training_examples']:,} training and {summary['validation_examples']:,} validation "
             f"examples; test: {summary['test']}. Ratios are against {baseline}; the learning rate was chosen "
             f"on validation with seed {summary['seeds'][0]}. Latency: generate() with the KV cache, "
             "answers forced to the decoding length, median of repeats; KV cache: layout length x layers x "
             "key/value width x beams, in the LM's dtype.\n")
    return "\n".join(lines) + "\n" + notes + per_type_table(summary)


def per_type_table(summary: dict[str, Any]) -> str:
    """VQA accuracy per answer type (mean over seeds), where the test set has types; else nothing."""
    kinds = sorted({kind for result in summary["methods"] for kind in result.get("per_type_mean", {})})
    if not kinds:
        return ""
    lines = [f"\n| method | {summary['metric']} | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for result in summary["methods"]:
        per_type = result["per_type_mean"]
        cells = " | ".join(f"{per_type[kind]:.2f}" if kind in per_type else "" for kind in kinds)
        lines.append(f"| {result['name']} | {result['score_mean']:.2f} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Score against inference cost (latency and KV cache per sample), one marker per method."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display, no pyplot state

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    costs = (("latency_ms_per_sample", 1, "generation latency per sample (ms)"),
             ("kv_bytes_per_sample", 2**-10, "KV cache per sample (KiB)"))
    for axes, (key, scale, label) in zip(panels, costs, strict=True):
        for index, result in enumerate(summary["methods"]):
            axes.errorbar(result[key] * scale, result["score_mean"], yerr=result["score_std"], capsize=3,
                          marker="osD^v<>ph*"[index % 10], linestyle="none", label=result["name"])
        axes.set(xlabel=label, xscale="log")
        axes.xaxis.set_major_formatter(_log_tick_label(axes))
        axes.xaxis.set_minor_formatter(_log_tick_label(axes))
        axes.grid(alpha=0.3)
    panels[0].set_ylabel(f"{summary['metric']} (mean ± std over {len(summary['seeds'])} seeds)")
    panels[1].legend(loc="best", fontsize="small")
    figure.suptitle(f"{summary['metric']} against inference cost")
    figure.savefig(path, dpi=100)


def series_name(result: dict[str, Any]) -> str:
    """What a method is apart from its LM: its name without the LM's ('qwen-blind' -> 'blind'), or eP-ALM."""
    name, lm = result["name"], Path(result["lm"]).name
    return (name[len(lm):].lstrip("-_ ") or "eP-ALM") if name.startswith(lm) else name


def plot_ladder(summary: dict[str, Any], path: Path) -> None:
    """Score against the frozen LM's parameters, one line per kind of method (eP-ALM, blind, oracle...)."""
    from matplotlib.figure import Figure

    series: dict[str, list[tuple[int, float]]] = {}
    for result in summary["methods"]:
        series.setdefault(series_name(result), []).append((result["lm_parameters"], result["score_mean"]))
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for index, (name, points) in enumerate(series.items()):
        sizes, scores = zip(*sorted(points), strict=True)
        axes.plot([size / 1e6 for size in sizes], scores, marker="osD^v<>ph*"[index % 10], label=name)
    axes.set(xscale="log", xlabel="frozen LM parameters (millions)", ylabel=summary["metric"])
    axes.xaxis.set_major_formatter(_log_tick_label(axes))
    axes.xaxis.set_minor_formatter(_log_tick_label(axes))
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.suptitle(f"{summary['metric']} against the frozen LM's size")
    figure.savefig(path, dpi=100)


def _log_tick_label(axes):
    """Plain numbers on a log axis (not powers of ten); over more than half a decade only the ticks at
    1, 2, 3 and 5 times a power of ten, so that the labels of 6..9 do not run into each other."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _position: int) -> str:
        low, high = axes.get_xlim()
        leading = round(value / 10 ** math.floor(math.log10(value)))
        return f"{value:g}" if math.log10(high / low) <= 0.5 or leading in (1, 2, 3, 5) else ""

    return FuncFormatter(label)
