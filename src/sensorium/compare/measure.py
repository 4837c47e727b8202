"""Measuring trained runs on the test set: each adapter's score, and its inference costs (trainable
parameters, adapter size, generation latency, KV cache), all in one process, over each frozen LM loaded once
(methods of one LM are measured on the same weights; a ladder of LMs loads the next when a method needs it)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from ..config import WEIGHTS_NAME, AdapterConfig
from ..data import Example, read_dataset
from ..evaluate import headline, predict_all, predictions_name, report, write_predictions
from ..layout import kv_cache_bytes
from ..lm import lm_facts, load_lm
from ..model import PerceptualLM
from ..oracle import with_truth
from ..recipe import Recipe, TrainingOptions
from ..train import EncodedExamples, cached_features, lm_dtype, mixed_precision
from ..trained import ADAPTER_FOLDER, recorded_recipe
from .comparison import Comparison

TEST_RESULT = "test.json"  # a run's test score (and, for VQA, its accuracy per answer type), kept in its folder
TEST_PREDICTIONS = "test"  # prefix of the run's test predictions file, beside it


@dataclass
class Evaluator:
    """Scores and costs of trained adapters on the test set; the frozen LM of the last adapter measured stays
    loaded, so methods of one LM share its weights."""

    test: list[Example]
    options: TrainingOptions  # the feature cache's batch size and workers
    batch_size: int
    latency_batch: int
    latency_repeats: int
    device: torch.device
    dtype: torch.dtype  # the frozen LM's weights, as training holds them
    frozen: dict[str, Any] = field(default_factory=dict)  # LM name -> (lm, tokenizer); one at a time

    def load(self, run: Path) -> PerceptualLM:
        folder = run / ADAPTER_FOLDER
        name = AdapterConfig.load(folder).lm
        if name not in self.frozen:
            self.frozen.clear()  # before the next LM loads: one frozen LM in memory at a time
            self.frozen[name] = load_lm(name, self.dtype, device_map={"": self.device})
        lm, tokenizer = self.frozen[name]
        model = PerceptualLM.from_pretrained(folder, lm=lm, tokenizer=tokenizer)
        return model.to(self.device).eval()

    @cached_property
    def test_with_truth(self) -> list[Example]:
        """The test set with each medium's truth as text, for oracle runs (read once for them all)."""
        return with_truth(self.test)

    def features(self, model: PerceptualLM, run: Path) -> EncodedExamples:
        """The test set as the run was trained: a blind run's images zeroed, an oracle's truth stated as text."""
        trained = recorded_recipe(model.config, run / ADAPTER_FOLDER).training
        options = TrainingOptions(blind=trained.blind, oracle=trained.oracle,
                                  cache_batch_size=self.options.cache_batch_size,
                                  cache_workers=self.options.cache_workers)
        test = self.test_with_truth if trained.oracle else self.test
        examples, features, row_of, _ = cached_features(model, test, options, skip_bad=False)
        return examples, features, row_of

    def score(self, run: Path) -> dict[str, Any]:
        """The run's test result, kept in its folder with its predictions: the headline ``score`` (accuracy or
        CIDEr) and, for VQA, ``accuracy_per_type``."""
        saved = run / TEST_RESULT
        if saved.is_file():
            return json.loads(saved.read_text())
        model = self.load(run)
        examples, features, row_of = self.features(model, run)
        records = predict_all(model, examples, features, row_of, self.batch_size, progress=False)
        task = model.config.task
        result = report(task, records)
        name, value = headline(result)
        scores = {"metric": name, "score": value, "examples": len(records)}
        if task != "caption":
            scores["accuracy_per_type"] = {kind: group.accuracy for kind, group in sorted(result.per_type.items())}
        write_predictions(task, records, run / f"{TEST_PREDICTIONS}-{predictions_name(task)}")
        saved.write_text(json.dumps(scores) + "\n")
        return scores

    def costs(self, run: Path) -> dict[str, Any]:
        """Inference costs of the run's adapter, measured now (all methods in the same process)."""
        from ..bench.common import Timer

        model = self.load(run)
        examples, features, row_of = self.features(model, run)
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
        facts = lm_facts(model.lm)
        per_token = kv_cache_bytes(facts, 1, next(model.lm.parameters()).element_size())
        return {"trainable_parameters": model.parameter_counts()[0], "lm_parameters": facts.parameters,
                "adapter_bytes": (run / ADAPTER_FOLDER / WEIGHTS_NAME).stat().st_size,
                "slot_columns": model.slot_count, "prefix_columns": model.prefix_length,
                "latency_ms_per_sample": 1000 * seconds / len(batch),
                "kv_bytes_per_sample": per_token * tokens * options.get("num_beams", 1)}


def evaluator_for(comparison: Comparison) -> Evaluator:
    """The test set, and the frozen LMs held as training holds them (bf16 on a GPU by default), so that
    latency and KV cache are measured as the adapters would run."""
    base = Recipe.from_dict(comparison.recipe)
    device = PartialState().device
    dtype = lm_dtype(base.training.lm_dtype, mixed_precision(base.training.mixed_precision), device)
    return Evaluator(read_dataset(base.data["eval"]), base.training, base.eval_batch_size,
                     comparison.latency_batch, comparison.latency_repeats, device, dtype)


RELATIVE = ("trainable_parameters", "adapter_bytes", "train_seconds", "latency_ms_per_sample", "kv_bytes_per_sample")


def with_relative(results: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each method's costs as ratios to the baseline's, its score as a difference in points."""
    base = next(r for r in results if r["name"] == baseline)
    for result in results:  # None where the baseline's figure is 0 (a run too short to time)
        result["relative"] = {"score_delta": result["score_mean"] - base["score_mean"],
                              **{key: result[key] / base[key] if base[key] else None for key in RELATIVE}}
    return results
