"""Benchmark suites run end to end on tiny models: table, JSON line, sane ratios (never timings)."""

from __future__ import annotations

import json
import math

import pytest

from sensorium.bench.__main__ import main


@pytest.fixture
def models(tiny_lm_folder, tiny_vit_folder, tmp_path) -> list[str]:
    return ["--lm", tiny_lm_folder("llama"), "--encoder", tiny_vit_folder, "--image-size", "32", "--device", "cpu",
            "--limit", "3", "--results", str(tmp_path / "results.jsonl")]


@pytest.fixture
def common(models) -> list[str]:
    return [*models, "--repeats", "1", "--warmup", "0"]


def appended(tmp_path, line: dict, capsys, title: str) -> None:
    """The suite printed its table and appended exactly the line it returned."""
    assert title in capsys.readouterr().out
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(text) for text in lines] == [json.loads(json.dumps(line))]
    assert {"suite", "time", "machine", "settings"} <= line.keys()
    assert {"cpu", "torch_threads", "gpu", "precision"} <= line["machine"].keys()


def assert_ratios(values: dict) -> None:
    ratios = {k: v for k, v in values.items() if "_over_" in k}
    assert ratios
    assert all(math.isfinite(v) and v > 0 for v in ratios.values()), ratios


def test_generation(common, tmp_path, capsys):
    line = main(["generation", *common, "--batch-sizes", "2", "--new-tokens", "2", "--beams", "1", "2"])
    appended(tmp_path, line, capsys, "generation:")
    assert [(row["batch"], row["beams"]) for row in line["rows"]] == [(2, 1), (2, 2)]
    for row in line["rows"]:
        assert {"epalm_ms", "nocache_ms", "lm_ms", "allpatch_ms"} <= row.keys()
        assert_ratios(row)
        # Every patch of the tiny ViT (16 + [CLS]) against eP-ALM's soft prompt and slot.
        assert row["allpatch_kv_bytes"] > row["epalm_kv_bytes"]


def test_training(common, tmp_path, capsys):
    line = main(["training", *common, "--batch-size", "2"])
    appended(tmp_path, line, capsys, "training step, batch 2")
    assert {"cached_ms", "encoder_ms", "lm_ms", "cached_examples_per_s"} <= line.keys()
    assert_ratios(line)
    memory = line["memory"]
    assert_ratios(memory)
    # Gradients and AdamW state exist for the trainable parameters only (plus AdamW's step counters).
    assert memory["grad_bytes"] == memory["trainable_bytes"]
    assert 2 <= memory["optimizer_state_over_trainable"] < 2.01


def test_encode(common, tmp_path, capsys):
    line = main(["encode", *common, "--images", "3", "--workers", "0", "1", "--batch-size", "2"])
    appended(tmp_path, line, capsys, "feature cache fill, 3 images")
    assert [row["workers"] for row in line["rows"]] == [0, 1]
    assert all(row["images_per_s"] > 0 for row in line["rows"])
    assert 0 < line["decode_share"] < 1


def test_gpu_smoke_runs_on_cpu(common, tmp_path, capsys):
    line = main(["gpu", *common, "--smoke"])
    appended(tmp_path, line, capsys, "accelerator run, batch 2")
    assert line["settings"]["batch_size"] == 2 and line["settings"]["repeats"] == 1
    assert_ratios(line["training"])
    assert_ratios(line["generation"])
    assert line["generation"]["epalm_tokens_per_s"] > 0


def test_serve_smoke(models, tmp_path, capsys):
    line = main(["serve", *models, "--smoke"])
    appended(tmp_path, line, capsys, "serving, 2 clients, 1 s per mode")
    batching, one_by_one = line["rows"]
    assert (batching["mode"], batching["max_batch"], one_by_one["max_batch"]) == ("batching", 8, 1)
    for row in line["rows"]:
        assert row["requests"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert 1 <= batching["mean_batch"] <= 2 and one_by_one["mean_batch"] == 1
    assert_ratios(line)


def test_adapters(common, tmp_path, capsys):
    line = main(["adapters", *common, "--adapters", "1", "3", "--new-tokens", "3"])
    appended(tmp_path, line, capsys, "one request, greedy, 3 new tokens")
    assert [row["adapters"] for row in line["rows"]] == [1, 3]
    assert all(row["decode_ms_per_token"] > 0 for row in line["rows"])
    assert [row["idle_hooks"] for row in line["rows"]] == [0, 0], "hooks outside a request cost every adapter"
    assert_ratios(line)


def test_floor(common, tmp_path, capsys):
    line = main(["floor", *common, "--batches", "1", "2", "--new-tokens", "3", "--caches", "dynamic",
                 "static"])
    appended(tmp_path, line, capsys, "greedy decode steps (3 new tokens")
    rows = {(row["weights"], row["batch"], row["cache"]): row for row in line["rows"]}
    assert set(rows) == {(w, b, c) for w in ("float32", "bfloat16", "int8") for b in (1, 2)
                         for c in ("dynamic", "static")}
    read = {w: rows[w, 1, "static"]["weight_bytes_per_token"] for w in ("float32", "bfloat16", "int8")}
    assert read["float32"] == 2 * read["bfloat16"], "bfloat16 halves every weight"
    assert read["bfloat16"] > read["int8"] > read["float32"] / 4, "int8 data is a quarter, plus its scales"
    for row in line["rows"]:  # the floor: the step's weight bytes at the rate its format's matvec reads them
        assert row["read_bytes_per_second"] > 0 and row["decode_over_floor"] > 0
        assert row["floor_ms"] == pytest.approx(1000 * row["weight_bytes_per_token"] / row["read_bytes_per_second"])


def test_compile(common, tmp_path, capsys):
    """Traced with the eager backend (no codegen): batches 1 and 3 in buckets 1 and 4, each compiled once, and a
    second request of the same bucket compiles nothing."""
    line = main(["compile", *common, "--batches", "1", "3", "--new-tokens", "4", "--backend", "eager"])
    appended(tmp_path, line, capsys, "decode steps (4 new tokens")
    assert [(row["batch"], row["batch_bucket"]) for row in line["rows"]] == [(1, 1), (3, 4)]
    for row in line["rows"]:
        assert row["compiles"] >= 1 and row["compiles_in_same_bucket"] == 0
        assert_ratios(row)
