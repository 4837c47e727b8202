"""Measuring trained runs on the test set: each adapter's score, and its inference costs (trainable
parameters, adapter size, generation latency, KV cache), all over one frozen LM loaded once, so that every
method is measured in the same process on the same weights."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from ..config import WEIGHTS_NAME
from ..data import Example, read_dataset
from ..evaluate import headline, predict_all, report
from ..layout import kv_cache_bytes
from ..lm import lm_facts, load_lm
from ..model import PerceptualLM
from ..recipe import Recipe, TrainingOptions
from ..train import ADAPTER_FOLDER, EncodedExamples, cached_features, lm_dtype, mixed_precision
from .comparison import Comparison

TEST_RESULT = "test.json"  # a run's test score, kept in its folder


@dataclass
class Evaluator:
    """Scores and costs of trained adapters on the test set, over one frozen LM loaded once."""

    lm: Any
    tokenizer: Any
    test: list[Example]
    options: TrainingOptions  # the feature cache's batch size and workers
    batch_size: int
    latency_batch: int
    latency_repeats: int
    device: torch.device

    def load(self, run: Path) -> PerceptualLM:
        model = PerceptualLM.from_pretrained(run / ADAPTER_FOLDER, lm=self.lm, tokenizer=self.tokenizer)
        return model.to(self.device).eval()

    def features(self, model: PerceptualLM) -> EncodedExamples:
        examples, features, row_of, _ = cached_features(model, self.test, self.options, skip_bad=False)
        return examples, features, row_of

    def score(self, run: Path) -> float:
        """The run's test score (accuracy or CIDEr), kept in its folder."""
        saved = run / TEST_RESULT
        if saved.is_file():
            return json.loads(saved.read_text())["score"]
        model = self.load(run)
        examples, features, row_of = self.features(model)
        records = predict_all(model, examples, features, row_of, self.batch_size, progress=False)
        name, value = headline(report(model.config.task, records))
        saved.write_text(json.dumps({"metric": name, "score": value, "examples": len(records)}) + "\n")
        return value

    def costs(self, run: Path) -> dict[str, Any]:
        """Inference costs of the run's adapter, measured now (all methods in the same process)."""
        from ..bench.common import Timer

        model = self.load(run)
        examples, features, row_of = self.features(model)
        batch = [examples[i % len(examples)] for i in range(self.latency_batch)]
        batch_features = features[[row_of[e.media] for e in batch]]
        questions = [e.question for e in batch]
        options = model.generation_options(questions)
        length = options["max_new_tokens"]
        exact = {"min_new_tokens": length, "max_new_tokens": length}  # EOS held back: equal work for all
        timer = Timer(str(self.device), self.latency_repeats, warmup=1)
        seconds = timer.median(lambda: model.generate(batch_features, questions, **exact))
        prompt_tokens = statistics.mean(len(ids) for ids in model.prompt_ids([e.question for e in examples]))
        tokens = model.prefix_length + prompt_tokens + length  # a mean over the test questions
        per_token = kv_cache_bytes(lm_facts(model.lm), 1, next(model.lm.parameters()).element_size())
        return {"trainable_parameters": model.parameter_counts()[0],
                "adapter_bytes": (run / ADAPTER_FOLDER / WEIGHTS_NAME).stat().st_size,
                "slot_columns": model.slot_count, "prefix_columns": model.prefix_length,
                "latency_ms_per_sample": 1000 * seconds / len(batch),
                "kv_bytes_per_sample": per_token * tokens * options.get("num_beams", 1)}


def evaluator_for(comparison: Comparison) -> Evaluator:
    """The test set and the frozen LM as training holds it (bf16 on a GPU by default), loaded once, so that
    latency and KV cache are measured as the adapters would run."""
    base = Recipe.from_dict(comparison.recipe)
    device = PartialState().device
    dtype = lm_dtype(base.training.lm_dtype, mixed_precision(base.training.mixed_precision), device)
    lm, tokenizer = load_lm(base.model.lm, dtype, device_map={"": device})
    return Evaluator(lm, tokenizer, read_dataset(base.data["eval"]), base.training, base.eval_batch_size,
                     comparison.latency_batch, comparison.latency_repeats, device)


RELATIVE = ("trainable_parameters", "adapter_bytes", "train_seconds", "latency_ms_per_sample", "kv_bytes_per_sample")


def with_relative(results: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each method's costs as ratios to the baseline's, its score as a difference in points."""
    base = next(r for r in results if r["name"] == baseline)
    for result in results:  # None where the baseline's figure is 0 (a run too short to time)
        result["relative"] = {"score_delta": result["score_mean"] - base["score_mean"],
                              **{key: result[key] / base[key] if base[key] else None for key in RELATIVE}}
    return results
