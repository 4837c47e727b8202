"""Training loop: exact resume, atomic checkpoints, feature cache reuse, bad-input handling."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sensorium import train as training
from sensorium.cache import FeatureCache
from sensorium.config import CONFIG_NAME, QUESTIONS_NAME, WEIGHTS_NAME
from sensorium.errors import BadInputError
from sensorium.recipe import Recipe, apply_override

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture
def manifest(tmp_path):
    lines = []
    for name, rgb in COLORS.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"{name}.png")
        lines.append({"media": f"{name}.png", "question": "what color is the shape ?", "answers": [name]})
        lines.append({"media": f"{name}.png", "question": "is there a red shape ?",
                      "answers": ["yes" if name == "red" else "no"]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out, **training_options) -> Recipe:
    options = {"batch_size": 4, "max_steps": 4, "warmup_steps": 1, "checkpoint_every": 2,
               "mixed_precision": "no", "keep_checkpoints": 5, **training_options}
    return Recipe.from_dict({
        "model": {"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 2,
                  "inject_layers": [2, 3]},
        "data": {"train": {"format": "jsonl", "path": str(manifest)},
                 "eval": {"format": "jsonl", "path": str(manifest)}},
        "training": options, "generation": {"max_new_tokens": 3}, "out": str(out),
    })


def test_auto_mixed_precision_follows_the_cpu(monkeypatch):
    """auto trains in bf16 autocast on a CPU that multiplies bf16 natively, without it where bf16 is emulated; the
    frozen LM's weights stay float32 on a CPU either way."""
    from sensorium.lm import NATIVE_BF16_ENV

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    assert training.mixed_precision("auto") == "bf16"
    assert training.lm_dtype("auto", "bf16", torch.device("cpu")) == torch.float32
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert training.mixed_precision("auto") == "no"
    assert training.mixed_precision("bf16") == "bf16"
    monkeypatch.setenv(NATIVE_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="SENSORIUM_NATIVE_BF16 must be 1 or 0"):
        training.mixed_precision("auto")


def test_training_writes_adapter_summary_and_predictions(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path,
                                                         capsys):
    """The adapter, with the statistics of the questions it trained on (what ``sensorium questions`` records from
    the training data its config names), the summary and the predictions."""
    from sensorium.cli import main

    summary = training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "run"))
    out = tmp_path / "run"
    assert (out / "adapter" / WEIGHTS_NAME).is_file()
    recorded = load_file(out / "adapter" / QUESTIONS_NAME)
    assert recorded["count"] == 6 and recorded["spread"] > 0
    assert main(["questions", str(out)]) == 0 and "recorded 6 of 6 questions" in capsys.readouterr().out
    assert torch.allclose(load_file(out / "adapter" / QUESTIONS_NAME)["centroid"], recorded["centroid"], atol=1e-5)
    assert json.loads((out / "adapter" / CONFIG_NAME).read_text())["metrics"]["accuracy"] == \
        summary["accuracy"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]


def test_resume_continues_exactly(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path):
    straight = tmp_path / "straight"
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, straight))
    # An interrupted copy: only the step-2 checkpoint survived.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight / "checkpoints" / "step-0000002", interrupted / "checkpoints" / "step-0000002")
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, interrupted), resume=True)
    expected = load_file(straight / "adapter" / WEIGHTS_NAME)
    resumed = load_file(interrupted / "adapter" / WEIGHTS_NAME)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0)


def test_a_crash_while_saving_keeps_the_latest_checkpoint_intact(tiny_lm_folder, tiny_vit_folder, manifest,
                                                                tmp_path, monkeypatch):
    out = tmp_path / "run"
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out))
    shutil.rmtree(out / "checkpoints" / "step-0000004")  # as if the run had stopped after step 2

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(training.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out), resume=True)
    assert sorted(training.checkpoint_steps(out)) == [2]
    latest = training.checkpoint_steps(out)[2]
    assert torch.load(latest / training.STATE_NAME, weights_only=True)["step"] == 2


def test_encoder_runs_once_per_distinct_image(tiny_vit_folder, manifest, tmp_path, monkeypatch):
    from sensorium.encoders import load_encoder

    encoder = load_encoder(tiny_vit_folder)
    cache = FeatureCache(encoder, root=tmp_path / "cache")
    paths = [str(manifest.parent / f"{c}.png") for c in COLORS]
    first, rows, _ = cache.features(paths + paths[:1])
    assert first.shape == (3, encoder.num_blocks, encoder.dim) and len(rows) == 3
    calls = []
    monkeypatch.setattr(type(encoder), "forward", lambda self, x: calls.append(x) or None)
    again, rows_again, _ = FeatureCache(encoder, root=tmp_path / "cache").features(list(reversed(paths)))
    assert not calls, "cached features were recomputed"
    for path in paths:
        torch.testing.assert_close(again[rows_again[path]], first[rows[path]])


def _garbage(shard: Path) -> None:
    shard.write_bytes(bytes(range(256)) * (shard.stat().st_size // 256 + 1))


def _nan(shard: Path) -> None:
    with safe_open(shard, "pt") as handle:
        metadata, features = handle.metadata(), handle.get_tensor("features")
    save_file({"features": torch.full_like(features, float("nan"))}, shard, metadata=metadata)


def _misshaped(shard: Path) -> None:
    with safe_open(shard, "pt") as handle:
        metadata, features = handle.metadata(), handle.get_tensor("features")
    save_file({"features": features[:, :1].contiguous()}, shard, metadata=metadata)


def _permuted_keys(shard: Path) -> None:
    index = shard.with_suffix(".json")
    entry = json.loads(index.read_text())
    index.write_text(json.dumps({**entry, "keys": entry["keys"][::-1]}))


def _before_digests(shard: Path) -> None:
    """The index format of caches written before shards carried a digest: a bare key list."""
    index = shard.with_suffix(".json")
    index.write_text(json.dumps(json.loads(index.read_text())["keys"]))


DAMAGES = {
    "garbage": _garbage,
    "nan": _nan,
    "misshaped": _misshaped,
    "truncated": lambda shard: shard.write_bytes(shard.read_bytes()[:200]),
    "zeroed": lambda shard: shard.write_bytes(bytes(shard.stat().st_size)),
    "empty": lambda shard: shard.write_bytes(b""),
    "permuted keys": _permuted_keys,
    "index not json": lambda shard: shard.with_suffix(".json").write_text("{\"keys\": [\"ab"),
    "index gone": lambda shard: shard.with_suffix(".json").unlink(),
    "before digests": _before_digests,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_shard_is_computed_again(tiny_vit_folder, manifest, tmp_path, monkeypatch, caplog, damage):
    from sensorium.encoders import load_encoder

    encoder = load_encoder(tiny_vit_folder)
    paths = [str(manifest.parent / f"{c}.png") for c in COLORS]
    first, rows, _ = FeatureCache(encoder, root=tmp_path / "cache").features(paths)
    (shard,) = (tmp_path / "cache").rglob("shard-*.safetensors")
    DAMAGES[damage](shard)
    forward = type(encoder).forward
    calls = []
    monkeypatch.setattr(type(encoder), "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    with caplog.at_level("WARNING", logger="sensorium.cache"):
        again, rows_again, _ = FeatureCache(encoder, root=tmp_path / "cache").features(paths)
    assert calls == [len(paths)], "the damaged shard's files were not encoded again"
    assert [r.getMessage() for r in caplog.records if str(shard) in r.getMessage()], caplog.text
    for path in paths:
        assert torch.equal(again[rows_again[path]], first[rows[path]])
    # The damaged shard is gone; the new one verifies and serves the next run without encoding.
    calls.clear()
    caplog.clear()
    third, rows_third, _ = FeatureCache(encoder, root=tmp_path / "cache").features(paths)
    assert not calls and not caplog.records and not shard.exists()
    assert torch.equal(third[[rows_third[p] for p in paths]], first[[rows[p] for p in paths]])


def _encode_twice_with_decoding_workers(vit_folder: str, paths: list[str], root: str) -> tuple[int, ...]:
    from sensorium.encoders import load_encoder

    cache = FeatureCache(load_encoder(vit_folder), root=Path(root))
    cache.features(paths[:1], batch_size=1, workers=1)
    features, _, _ = cache.features(paths, batch_size=1, workers=1)  # the encoder has run: hooks installed
    return tuple(features.shape)


def test_decoding_workers_start_inside_a_spawned_process(tiny_vit_folder, manifest, tmp_path):
    """`compare --jobs` trains in spawned processes, where worker processes are spawned by default too; a
    transformers encoder that has run once holds hooks that cannot be pickled into such a worker."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    paths = [str(manifest.parent / f"{c}.png") for c in COLORS]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        shape = pool.submit(_encode_twice_with_decoding_workers, tiny_vit_folder, paths, str(tmp_path)).result()
    assert shape[0] == len(paths)


def test_cache_key_follows_preprocessing(tiny_vit_folder, tmp_path):
    from sensorium.encoders import load_encoder

    small = FeatureCache(load_encoder(tiny_vit_folder, image_size=16), root=tmp_path)
    large = FeatureCache(load_encoder(tiny_vit_folder, image_size=32), root=tmp_path)
    assert small.folder != large.folder


def add_bad_lines(manifest):
    (manifest.parent / "broken.png").write_text("not a png")
    extra = [{"media": "broken.png", "question": "what color is the shape ?", "answers": ["red"]},
             {"media": "gone.png", "question": "what color is the shape ?", "answers": ["red"]}]
    with manifest.open("a") as handle:
        handle.write("".join(json.dumps(line) + "\n" for line in extra))


def test_bad_files_stop_training_with_their_name(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path):
    add_bad_lines(manifest)
    with pytest.raises(BadInputError, match=r"(broken.png: not an image|gone.png: file not found)"):
        training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "run"))


def test_skip_bad_skips_and_counts(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path, capsys):
    add_bad_lines(manifest)
    summary = training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "run"),
                             skip_bad=True)
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().err
    assert summary["eval_questions"] == 6


def test_overrides_parse_yaml_values():
    values = {"training": {"lr": 1.0}}
    apply_override(values, "training.lr=3e-4")
    apply_override(values, "training.blind=true")
    apply_override(values, "model.encoder_blocks=[3, 5]")
    assert values == {"training": {"lr": "3e-4", "blind": True}, "model": {"encoder_blocks": [3, 5]}}
    recipe = Recipe.from_dict(values)
    assert recipe.training.lr == 3e-4 and recipe.model.encoder_blocks == [3, 5]
    with pytest.raises(ValueError, match="unknown training option"):
        Recipe.from_dict({"training": {"learning_rate": 1}})


def test_caption_training_scores_with_coco_metrics(tiny_lm_folder, tiny_vit_folder, tmp_path):
    lines = []
    for index, (name, rgb) in enumerate(COLORS.items()):
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"{name}.png")
        lines.append({"media": f"{name}.png", "id": index, "captions": [f"a {name} square", f"{name}"]})
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    recipe = tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "run")
    recipe.model = dataclasses.replace(recipe.model, task="caption", template=None)
    summary = training.train(recipe)
    assert {"CIDEr", "Bleu_4", "ROUGE_L"} <= set(summary["caption_scores"])
    results = json.loads((tmp_path / "run" / "captions_results.json").read_text())
    assert sorted(r["image_id"] for r in results) == [0, 1, 2]
    saved = json.loads((tmp_path / "run" / "adapter" / CONFIG_NAME).read_text())
    assert saved["task"] == "caption" and saved["template"] == "A picture of"


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def assert_same_adapter(first: Path, second: Path) -> None:
    expected, actual = load_file(first / WEIGHTS_NAME), load_file(second / WEIGHTS_NAME)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_a_fresh_run_replaces_an_earlier_runs_checkpoints(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path,
                                                          caplog, capsys):
    """Pruning by name kept the earlier run's higher steps and deleted this run's; --resume then resumed them."""
    out, alone = tmp_path / "run", tmp_path / "alone"
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out, max_steps=8, keep_checkpoints=2,
                               lr=0.05))
    assert sorted(training.checkpoint_steps(out)) == [6, 8]
    recipe = tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out, keep_checkpoints=2)
    training.train(recipe)
    assert f"{out / 'checkpoints'}: removing 2 checkpoint(s) of an earlier run (up to step 8)" in caplog.text
    assert sorted(training.checkpoint_steps(out)) == [2, 4]
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, alone, keep_checkpoints=2))
    assert_same_adapter(alone / "adapter", out / "adapter")
    capsys.readouterr()
    training.train(recipe, resume=True)
    assert "at step 4" in capsys.readouterr().err
    assert_same_adapter(alone / "adapter", out / "adapter")


def test_prune_keeps_the_highest_steps_by_number(tmp_path):
    for step in (9_999_998, 9_999_999, 10_000_000, 10_000_002):
        (tmp_path / "checkpoints" / f"step-{step:07d}").mkdir(parents=True)
    training.prune_checkpoints(tmp_path, 10_000_000, keep=2)
    assert sorted(training.checkpoint_steps(tmp_path)) == [9_999_999, 10_000_000]


def test_resume_refuses_a_checkpoint_of_another_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path, capsys):
    import yaml

    from sensorium.cli import main

    out = tmp_path / "run"
    recipe = tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    training.train(recipe)
    shutil.rmtree(out / "checkpoints" / "step-0000004")
    capsys.readouterr()
    assert main(["train", str(path), "training.lr=0.01", "model.prompt_length=2", "--resume"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the model-loading progress
    assert error.startswith("sensorium: error: "), error
    assert (f"{out / 'checkpoints' / 'step-0000002'}: a checkpoint of a different recipe "
            "(model.prompt_length: 1 -> 2; training.lr: 0.001 -> 0.01)") in error
    # Bookkeeping is not the recipe: other trackers, checkpoint spacing and eval batch resume the run.
    assert main(["train", str(path), "training.trackers=[]", "training.checkpoint_every=1", "eval_batch_size=2",
                 "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _drop_optimizer(folder: Path) -> None:
    state = torch.load(folder / training.STATE_NAME, weights_only=True)
    del state["optimizer"]
    torch.save(state, folder / training.STATE_NAME)


def _widen_prompt(folder: Path) -> None:
    adapter = load_file(folder / WEIGHTS_NAME)
    adapter["prompt"] = adapter["prompt"][:, :1].contiguous()
    save_file(adapter, folder / WEIGHTS_NAME)


CHECKPOINT_DAMAGES = {
    "training_state.pt: unreadable": lambda folder: _truncate(folder / training.STATE_NAME),
    f"{WEIGHTS_NAME}: unreadable": lambda folder: _truncate(folder / WEIGHTS_NAME),
    "training_state.pt: no valid optimizer": _drop_optimizer,
    f"{WEIGHTS_NAME}: tensor 'prompt' has shape [1, 1]": _widen_prompt,
    "training_state.pt: unreadable (": lambda folder: (folder / training.STATE_NAME).unlink(),
}


def test_a_damaged_latest_checkpoint_falls_back_to_an_intact_one(tiny_lm_folder, tiny_vit_folder, manifest,
                                                                 tmp_path, caplog):
    """The resumed run still ends with exactly the adapter of an uninterrupted run."""
    straight = tmp_path / "straight"
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, straight))
    for number, (message, damage) in enumerate(CHECKPOINT_DAMAGES.items()):
        run = copy_run(straight, tmp_path / f"damaged-{number}")
        shutil.rmtree(run / "adapter")
        damage(run / "checkpoints" / "step-0000004")
        caplog.clear()
        training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, run), resume=True)
        assert f"{run / 'checkpoints' / 'step-0000004'}/{message}" in caplog.text
        assert "checkpoint passed over, trying the one before it" in caplog.text
        assert_same_adapter(straight / "adapter", run / "adapter")
        assert sorted(training.checkpoint_steps(run)) == [2, 4]


def test_a_torn_last_metrics_line_is_dropped_and_the_final_evaluation_recorded_once(
        tiny_lm_folder, tiny_vit_folder, manifest, tmp_path, caplog):
    from sensorium.tracking import METRICS_NAME, read_metrics

    out = tmp_path / "run"
    recipe = tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out, eval_every=2)
    training.train(recipe)
    with (out / METRICS_NAME).open("a") as log:
        log.write('{"step": 4, "eval/acc')  # killed while writing
    training.train(recipe, resume=True)  # at max_steps: only the final evaluation runs again
    assert f"{out / METRICS_NAME}: dropping its last line, torn by a crash" in caplog.text
    records = read_metrics(out / METRICS_NAME)
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval/quick_accuracy" in r] == [2, 4]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [4]


def test_a_metrics_line_broken_before_the_last_is_an_error(tmp_path):
    from sensorium.tracking import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "train\n{"step": 3}\n')
    with pytest.raises(BadInputError, match=r"metrics.jsonl: line 2 is not a metrics record"):
        read_metrics(path)


HOLDER = """
import sys
from pathlib import Path
from sensorium.train import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_training_in_a_locked_folder_names_the_holder(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path):
    """Two trainings into one folder would interleave metrics.jsonl; the lock goes with its process, kill -9 too."""
    import os
    import signal
    import subprocess
    import sys

    import sensorium

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(sensorium.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BadInputError, match=rf"{out}: another training is using this folder "
                                                rf"\(process {holder.pid} on .+\); wait for it"):
            training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out))
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out, max_steps=2))
    assert sorted(training.checkpoint_steps(out)) == [2]


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0))
def test_a_metrics_log_cut_anywhere_reads_as_its_complete_records(cut):
    """A crash can stop a write at any byte: what is read back is always the records written whole."""
    from sensorium.tracking import read_metrics

    records = [{"step": step, "train/loss": 1 / step, "train/lr": 1e-3} for step in range(1, 6)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    cut %= len(text) + 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "metrics.jsonl"
        path.write_text(text[:cut])
        read = read_metrics(path)
    assert read == records[:len(read)]
    assert len(read) >= text[:cut].count("\n")


@pytest.fixture(scope="module")
def clean_cache(tiny_vit_folder, tmp_path_factory):
    """A feature cache of three images, and their features."""
    from sensorium.encoders import load_encoder

    folder = tmp_path_factory.mktemp("clean-cache")
    paths = []
    for name, rgb in COLORS.items():
        Image.new("RGB", (32, 32), rgb).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    encoder = load_encoder(tiny_vit_folder)
    features, rows, _ = FeatureCache(encoder, root=folder / "cache").features(paths)
    return encoder, folder / "cache", paths, {p: features[rows[p]] for p in paths}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_a_cache_shard_with_any_byte_flipped_is_computed_again(clean_cache, position, flip):
    encoder, cache, paths, expected = clean_cache
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "cache"
        shutil.copytree(cache, root)
        (shard,) = root.rglob("shard-*.safetensors")
        data = bytearray(shard.read_bytes())
        data[position % len(data)] ^= flip
        shard.write_bytes(bytes(data))
        features, rows, _ = FeatureCache(encoder, root=root).features(paths, workers=0)
        assert not shard.exists(), "the damaged shard was used"
    for path in paths:  # encoded again, maybe with another thread count than the fixture's: equal to rounding
        torch.testing.assert_close(features[rows[path]], expected[path])


def test_a_run_starts_from_the_adapter_init_from_names(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path):
    """With a negligible learning rate a run ends where it started: at init_from's adapter, whatever its own
    seed would have drawn; the recorded recipe keeps where it started."""
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "first"))
    start = load_file(tmp_path / "first" / "adapter" / WEIGHTS_NAME)
    still = {"lr": 1e-9, "prompt_lr": 1e-9, "seed": 1}
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "warm",
                               init_from=str(tmp_path / "first"), **still))
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "cold", **still))
    warm = load_file(tmp_path / "warm" / "adapter" / WEIGHTS_NAME)
    cold = load_file(tmp_path / "cold" / "adapter" / WEIGHTS_NAME)
    assert warm.keys() == start.keys()
    for name in start:
        torch.testing.assert_close(warm[name], start[name], rtol=0, atol=1e-6)
    assert not all(torch.allclose(cold[name], start[name], atol=1e-3) for name in start)
    recorded = json.loads((tmp_path / "warm" / "adapter" / CONFIG_NAME).read_text())["training"]["training"]
    assert recorded["init_from"] == str(tmp_path / "first")


def test_init_from_an_adapter_of_another_layout_is_refused(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path):
    training.train(tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "first"))
    recipe = tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path / "other",
                         init_from=str(tmp_path / "first" / "adapter"))
    recipe.model = dataclasses.replace(recipe.model, inject_layers=[1, 3])
    with pytest.raises(BadInputError, match=r"init_from=.*not this recipe's layout: inject_layers: \[2, 3\]") as error:
        training.train(recipe)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "other" / "adapter").exists()


def test_the_printed_samples_show_each_answer_type_as_it_comes():
    """One sample of every answer type first, whatever the model answered, then samples from across the set."""
    from sensorium.train import sample_records

    records = [{"answer_type": kind, "index": index}
               for index, kind in enumerate(["yes/no"] * 10 + ["shape"] * 3 + ["color"] * 5)]
    picked = sample_records(records, 6)
    assert [r["answer_type"] for r in picked[:3]] == ["yes/no", "shape", "color"]
    assert len(picked) == 6 and len({r["index"] for r in picked}) == 6
    assert [r["index"] for r in sample_records([{"answer_type": None, "index": i} for i in range(20)], 4)] == \
        [0, 5, 10, 15]


def test_a_fresh_run_never_removes_an_unfinished_runs_checkpoints(tiny_lm_folder, tiny_vit_folder, manifest,
                                                                   tmp_path):
    """Forgetting --resume after a crash is refused before anything loads, the crashed run's checkpoints kept;
    --restart starts over on purpose."""
    out = tmp_path / "run"
    recipe = tiny_recipe(tiny_lm_folder, tiny_vit_folder, manifest, out, max_steps=4, keep_checkpoints=2)
    training.train(recipe)
    (out / "summary.json").unlink()  # the run stopped before its result
    kept = {step: sorted(p.name for p in folder.iterdir()) for step, folder in training.checkpoint_steps(out).items()}
    with pytest.raises(BadInputError, match=r"holds an unfinished run \(checkpoints up to step 4.*--resume.*"
                                            r"--restart"):
        training.train(recipe)
    assert {step: sorted(p.name for p in folder.iterdir())
            for step, folder in training.checkpoint_steps(out).items()} == kept
    training.train(recipe, restart=True)
    assert (out / "summary.json").is_file() and training.unfinished_run(out) is None
