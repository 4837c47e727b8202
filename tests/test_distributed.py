"""Scaling: 2 CPU processes (gloo) train like 1, main-only writes, a sharded feature cache, the global
batch under accumulation, frozen-LM dtype and device map, trackers, curves, and the frozen LM sharded over 2
processes (FSDP2) against 1 unsharded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import sensorium
from sensorium import train as training
from sensorium.cli import main
from sensorium.config import QUESTIONS_NAME
from sensorium.injection import SlotInjector
from sensorium.recipe import Recipe
from sensorium.sharding import requested_sharding
from sensorium.tracking import METRICS_NAME, MetricsLog, read_metrics, selected_trackers

REPO = Path(__file__).resolve().parents[1]
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "fsdp-frozen-lm.yaml"
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
# Answers of 1 to 3 words: processes and micro-steps hold different numbers of target tokens.
DESCRIPTIONS = {"red": "red", "green": "green circle", "blue": "a blue triangle", "white": "no color"}

# Runs the CLI under an audit hook that records, per process, every file it opens for writing,
# renames, creates or deletes: who wrote what, whatever library did the writing.
RECORDER = textwrap.dedent("""
    import atexit, json, os, sys
    from sensorium.cli import main

    writes = []
    def audit(event, args):
        if event == "open" and isinstance(args[0], str) and args[2] & (os.O_WRONLY | os.O_RDWR):
            writes.append(["open", args[0]])
        elif event == "os.rename":
            writes.append(["rename", str(args[1])])
        elif event in ("os.mkdir", "os.remove", "shutil.rmtree"):
            writes.append([event, str(args[0])])
    sys.addaudithook(audit)
    record = os.path.join(os.environ["WRITES_DIR"], f"writes-{os.environ['RANK']}.json")
    atexit.register(lambda: open(record, "w").write(json.dumps(writes)))
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def shapes(tmp_path) -> Path:
    """Four images, eight questions: a global batch of 4 is two steps per epoch."""
    lines = []
    for name, rgb in COLORS.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"{name}.png")
        lines.append({"media": f"{name}.png", "question": "what color is the shape ?",
                      "answers": [DESCRIPTIONS[name]]})
        lines.append({"media": f"{name}.png", "question": "is there a red shape ?",
                      "answers": ["yes" if name == "red" else "no"]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def recipe_values(tiny_lm_folder, tiny_vit_folder, manifest: Path, out: Path, evaluate: bool = True,
                  **training_options) -> dict:
    data = {"train": {"format": "jsonl", "path": str(manifest)}}
    if evaluate:
        data["eval"] = {"format": "jsonl", "path": str(manifest)}
    options = {"batch_size": 4, "max_steps": 4, "warmup_steps": 1, "checkpoint_every": 2, "keep_checkpoints": 5,
               "mixed_precision": "no", "eval_every": 2 if evaluate else 0, **training_options}
    return {"model": {"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 2,
                      "inject_layers": [2, 3]},
            "data": data, "training": options, "generation": {"max_new_tokens": 3}, "out": str(out)}


def assert_same_adapter(first: Path, second: Path, atol: float) -> None:
    expected, actual = load_file(first / "adapter.safetensors"), load_file(second / "adapter.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert actual[name].dtype == torch.float32
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=atol)


def shard_keys(cache: Path) -> dict[Path, list[str]]:
    """Each feature-cache shard and the content keys of its rows."""
    (folder,) = (cache / "features").iterdir()
    shards = sorted(folder.glob("shard-*.safetensors"))
    return {shard: json.loads(shard.with_suffix(".json").read_text())["keys"] for shard in shards}


def test_two_processes_train_exactly_like_one(tiny_lm_folder, tiny_vit_folder, shapes, tmp_path, monkeypatch):
    cache, records = tmp_path / "cache", tmp_path / "writes"
    records.mkdir()
    monkeypatch.setenv("SENSORIUM_CACHE", str(cache))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_values(tiny_lm_folder, tiny_vit_folder, shapes, tmp_path / "two")))
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WRITES_DIR": str(records),
           "PYTHONPATH": os.pathsep.join([str(Path(sensorium.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(recorder), "train", str(recipe)], env=env, capture_output=True, text=True,
                              timeout=180)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "2 processes, 2 examples each per micro-step" in launched.stderr
    assert launched.stdout.count("adapter saved to") == 1  # the summary is printed once

    # The global batch of 4 on one process gives the same adapter and the same predictions.
    cached = shard_keys(cache)
    one = tmp_path / "one"
    training.train(Recipe.from_dict(recipe_values(tiny_lm_folder, tiny_vit_folder, shapes, one)))
    assert shard_keys(cache) == cached, "the second run encoded again instead of reading the cache"
    assert_same_adapter(one / "adapter", tmp_path / "two" / "adapter", atol=1e-6)
    assert (tmp_path / "two" / "predictions.jsonl").read_text() == (one / "predictions.jsonl").read_text()

    # Each process encoded its own half of the four images into its own shard; every image has one row.
    keys = [key for shard in cached.values() for key in shard]
    assert len(cached) == 2 and len(keys) == len(set(keys)) == len(COLORS)
    for shard, shard_rows in cached.items():
        assert load_file(shard)["features"].shape[0] == len(shard_rows)

    writes = {rank: json.loads((records / f"writes-{rank}.json").read_text()) for rank in (0, 1)}
    run = str(tmp_path / "two")
    for rank in (0, 1):
        assert [p for _, p in writes[rank] if "shard-" in p and p.endswith(".safetensors")], f"rank {rank}: no shard"
    assert not [w for w in writes[1] if w[1].startswith(run)], "rank 1 wrote into the run folder"
    written = {Path(p).relative_to(run).parts[0] for _, p in writes[0] if p.startswith(run + os.sep)}
    assert {"checkpoints", "adapter", "summary.json", "predictions.jsonl", METRICS_NAME, "curves.png",
            "tensorboard"} <= written
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]


def test_accumulation_splits_the_global_batch(tiny_lm_folder, tiny_vit_folder, shapes, tmp_path):
    """Two micro-steps of 2 make the same update as one step of 4: batch_size is per optimizer step."""
    for name, accumulation in (("whole", 1), ("accumulated", 2)):
        values = recipe_values(tiny_lm_folder, tiny_vit_folder, shapes, tmp_path / name, evaluate=False,
                               gradient_accumulation=accumulation, trackers=[])
        training.train(Recipe.from_dict(values))
    assert_same_adapter(tmp_path / "whole" / "adapter", tmp_path / "accumulated" / "adapter", atol=1e-6)
    assert not (tmp_path / "whole" / "tensorboard").exists()  # no trackers selected
    with pytest.raises(ValueError, match=r"batch_size=6 .* multiple of processes \(1\) x .*\(4\) = 4"):
        training.train(Recipe.from_dict(recipe_values(tiny_lm_folder, tiny_vit_folder, shapes, tmp_path / "bad",
                                                      batch_size=6, gradient_accumulation=4)))


def test_metrics_log_curves_and_tensorboard(tiny_lm_folder, tiny_vit_folder, shapes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    training.train(Recipe.from_dict(recipe_values(tiny_lm_folder, tiny_vit_folder, shapes, out)))
    records = read_metrics(out / METRICS_NAME)
    losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    assert sorted(losses) == [1, 2, 3, 4] and all(loss > 0 for loss in losses.values())
    assert [r["step"] for r in records if "eval/quick_accuracy" in r] == [2, 4]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [4]
    with Image.open(out / "curves.png") as curves:
        assert curves.format == "PNG" and curves.width > 500

    (events,) = (out / "tensorboard").iterdir()
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    logged = {event.step: event.value for event in accumulator.Scalars("train/loss")}
    assert logged.keys() == losses.keys()
    assert logged == pytest.approx(losses)

    # A resumed run keeps the records up to its checkpoint and drops what the interrupted run wrote later.
    MetricsLog(out, resumed_step=2)
    assert {r["step"] for r in read_metrics(out / METRICS_NAME)} == {1, 2}


def test_tracker_names_are_checked():
    assert selected_trackers("tensorboard") == ["tensorboard"]
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        selected_trackers(["tensorbord"])


def test_lm_dtype_follows_the_device():
    assert training.lm_dtype("auto", "bf16", torch.device("cpu")) == torch.float32
    assert training.lm_dtype("auto", "bf16", torch.device("cuda")) == torch.bfloat16
    assert training.lm_dtype("auto", "fp16", torch.device("cuda")) == torch.float16
    assert training.lm_dtype("auto", "no", torch.device("cuda")) == torch.float32
    assert training.lm_dtype("float16", "no", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="training.lm_dtype: 'fp8'"):
        training.lm_dtype("fp8", "no", torch.device("cpu"))


def test_bf16_lm_trains_a_float32_adapter_and_loads_with_a_device_map(tiny_lm_folder, tiny_vit_folder, shapes,
                                                                      tmp_path, monkeypatch, capsys):
    loaded = []

    def recording_load_lm(*args, **kwargs):
        loaded.append(training_load_lm(*args, **kwargs))
        return loaded[-1]

    training_load_lm = training.load_lm
    monkeypatch.setattr(training, "load_lm", recording_load_lm)
    out = tmp_path / "run"
    training.train(Recipe.from_dict(recipe_values(tiny_lm_folder, tiny_vit_folder, shapes, out, evaluate=False,
                                                  max_steps=2, gradient_accumulation=2, lm_dtype="bfloat16")))
    lm, _ = loaded[0]
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}
    adapter = load_file(out / "adapter" / "adapter.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in adapter.values())

    model = sensorium.load(out / "adapter", weights="bfloat16", device_map="auto")
    assert next(model.lm.parameters()).dtype == torch.bfloat16 and model.prompt.dtype == torch.float32
    image = shapes.parent / "red.png"
    with Image.open(image) as picture:
        expected = model.ask([picture.convert("RGB")], ["what color is the shape ?"], max_new_tokens=2)[0]
    capsys.readouterr()
    assert main(["ask", str(out / "adapter"), str(image), "what color is the shape ?", "--max-new-tokens", "2",
                 "--dtype", "bfloat16", "--device-map", "auto"]) == 0
    assert capsys.readouterr().out.strip() == expected


def launcher_environment(config: Path) -> dict[str, str]:
    """The Accelerate and FSDP variables that `accelerate launch --config_file CONFIG` gives every process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "sensorium", "train", "r.yaml"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp
    return {name: value for name, value in prepare_multi_gpu_env(args).items()
            if name.startswith(("FSDP_", "ACCELERATE_"))}


def test_fsdp_config_is_read_as_sharding_settings(monkeypatch):
    """What `accelerate launch --config_file` makes of the file, up to the settings the processes shard with; a
    setting sharding does not support is refused by name."""
    for name, value in launcher_environment(FSDP_CONFIG).items():
        monkeypatch.setenv(name, value)
    plugin = requested_sharding()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    with pytest.raises(ValueError, match="cpu_ram_efficient_loading: true .*; fsdp_activation_checkpointing: true"):
        requested_sharding()
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match=r"FSDP config: fsdp_version: 1 \(the LM is sharded with FSDP2"):
        requested_sharding()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert requested_sharding() is None


def losses(run: Path) -> list[float]:
    return [r["train/loss"] for r in read_metrics(run / METRICS_NAME) if "train/loss" in r]


@pytest.mark.parametrize(("arch", "layout", "accumulation"), [("llama", "sensorium", 1), ("opt", "paper", 2)])
def test_a_sharded_lm_trains_like_one_process(arch, layout, accumulation, tiny_lm_folder, tiny_vit_folder, shapes,
                                              tmp_path, monkeypatch):
    """2 gloo processes, each holding half of the frozen LM (FSDP2, recipes/accelerate/fsdp-frozen-lm.yaml), give
    the losses, the adapter and the predictions of 1 process holding it whole, over 4 steps of a global batch of 4
    (the evaluations split between the processes, which answer unequal numbers of batches in step):
    both injections (a slot overwritten in each layer; the paper's visual column and its attention masks), over an
    LM with its own output head (Llama) and one tied to its embeddings (OPT), in one micro-step or two.

    Tolerance 1e-6: the two runs compute the same function, but the sharded one sums the adapter's gradients over
    the processes (a gloo all-reduce) where one process sums over its whole batch: float32 additions in another
    order, amplified a little by Adam's normalisation over 4 steps (observed: at most 3e-8 on the adapter, 1.2e-7
    relative on the losses). Without the gradients' average the losses differ from the third step on, and without
    injection the adapter differs by 2.5e-3: were the hooks lost under sharding, this test would fail.
    """
    # Seven questions in batches of 3: one process answers two batches, the other one, and steps with it once more.
    evaluated = tmp_path / "eval.jsonl"
    evaluated.write_text("".join(shapes.read_text().splitlines(keepends=True)[:7]))

    def values(out: Path, evaluate: bool = True) -> dict:
        chosen = recipe_values(tiny_lm_folder, tiny_vit_folder, shapes, out, evaluate,
                               gradient_accumulation=accumulation)
        chosen["model"].update(lm=tiny_lm_folder(arch), layout=layout)
        if evaluate:
            chosen["data"]["eval"]["path"] = str(evaluated)
            chosen["eval_batch_size"] = 3
        return chosen

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values(tmp_path / "sharded")))
    env = {**os.environ, **launcher_environment(FSDP_CONFIG), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(sensorium.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "sensorium", "train", str(recipe)], env=env, capture_output=True, text=True,
                              timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    counts = re.search(r"sharded over 2 processes \(FSDP2\): ([\d,]+) of its ([\d,]+)", launched.stderr)
    held, total = (int(count.replace(",", "")) for count in counts.group(1, 2))
    assert held < 0.55 * total  # about half of the LM on each (the unit sizes do not all split evenly)

    whole = tmp_path / "whole"
    training.train(Recipe.from_dict(values(whole)))
    assert losses(tmp_path / "sharded") == pytest.approx(losses(whole), rel=1e-6)
    assert_same_adapter(whole / "adapter", tmp_path / "sharded" / "adapter", atol=1e-6)
    assert (tmp_path / "sharded" / "predictions.jsonl").read_text() == (whole / "predictions.jsonl").read_text()
    questions = [load_file(run / "adapter" / QUESTIONS_NAME) for run in (whole, tmp_path / "sharded")]
    assert torch.allclose(questions[0]["centroid"], questions[1]["centroid"], atol=1e-5)  # every process embeds

    blind = tmp_path / "without-injection"
    monkeypatch.setattr(SlotInjector, "injecting", lambda self, tokens, slots: nullcontext())
    training.train(Recipe.from_dict(values(blind, evaluate=False)))
    assert losses(blind) != pytest.approx(losses(whole), rel=1e-3)
    with pytest.raises(AssertionError):
        assert_same_adapter(blind / "adapter", tmp_path / "sharded" / "adapter", atol=1e-4)
