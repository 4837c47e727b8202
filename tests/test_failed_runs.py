"""A failed run loses nothing: whatever makes a run fail, the earlier run in its folder is left byte for byte, and a
run that trained keeps its adapter whatever happens after the last step."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import yaml
from conftest import file_bytes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from sensorium import train as training
from sensorium.cli import main
from sensorium.config import WEIGHTS_NAME, Decoding
from sensorium.schema import BOUNDS
from sensorium.tracking import METRICS_NAME


@pytest.fixture(scope="module")
def finished_run(tiny_lm_folder, tiny_vit_folder, tmp_path_factory):
    """A recipe file and the folder of its finished run (three checkpoints, metrics, adapter)."""
    root = tmp_path_factory.mktemp("finished")
    lines = []
    for name, rgb in {"red": (255, 0, 0), "blue": (0, 0, 255)}.items():
        Image.new("RGB", (32, 32), rgb).save(root / f"{name}.png")
        lines.append({"media": f"{name}.png", "question": "what color is the shape ?", "answers": [name]})
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 2, "inject_layers": [2, 3]},
        "data": {"train": {"format": "jsonl", "path": str(manifest)},
                 "eval": {"format": "jsonl", "path": str(manifest)}},
        "training": {"batch_size": 2, "max_steps": 3, "warmup_steps": 1, "checkpoint_every": 1, "keep_checkpoints": 3,
                     "mixed_precision": "no", "cache_workers": 0, "trackers": []},
        "generation": {"max_new_tokens": 2}, "out": str(root / "run"),
    }))
    assert main(["train", str(recipe)]) == 0
    assert sorted(training.checkpoint_steps(root / "run")) == [1, 2, 3]
    return recipe, root / "run"


def _out_of_bounds(name: str) -> st.SearchStrategy:
    low, high = BOUNDS[name]
    if isinstance(low, float):
        return st.one_of(st.floats(max_value=low, exclude_max=True), st.floats(min_value=high, exclude_min=True))
    return st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1))


DECODING = [spec.name for spec in dataclasses.fields(Decoding)]
# Ways to break a run, each as one ``section.key=value`` override: a missing file anywhere in the data, a size past
# its bound in any section, a decoding option out of range, a decoding switch neither true nor false, an unknown
# one.
BREAKING = st.one_of(
    st.sampled_from(["data.train.path", "data.eval.path"]).map(lambda key: f"{key}=NOPE.jsonl"),
    st.sampled_from(["model.lm", "model.encoder", "training.init_from"]).map(lambda key: f"{key}=/no/such/model"),
    st.sampled_from([("training.batch_size", "batch_size"), ("training.max_steps", "steps"),
                     ("training.cache_batch_size", "batch_size"), ("eval_batch_size", "batch_size"),
                     ("model.prompt_length", "prompt_length"), ("model.image_size", "image_size")]).flatmap(
        lambda pair: _out_of_bounds(pair[1]).map(lambda value: f"{pair[0]}={value}")),
    st.sampled_from([name for name in DECODING if name in BOUNDS]).flatmap(
        lambda name: _out_of_bounds(name).map(lambda value: f"generation.{name}={value}")),
    st.sampled_from([name for name in DECODING if name not in BOUNDS]).map(lambda name: f"generation.{name}=maybe"),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
        lambda name: name not in DECODING).map(lambda name: f"generation.{name}=1"),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(override=BREAKING, resume=st.booleans())
@example(override="data.train.path=NOPE.jsonl", resume=False)
@example(override="generation.num_beams=0", resume=False)
def test_a_run_that_fails_leaves_the_earlier_run_untouched(finished_run, override, resume, capsys):
    recipe, out = finished_run
    before = file_bytes(out)
    assert main(["train", str(recipe), override, *(["--resume"] if resume else [])]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("sensorium: error: ")
    assert file_bytes(out) == before


def test_a_fresh_run_ignores_a_damaged_metrics_log_of_the_earlier_run(finished_run, tmp_path):
    recipe, finished = finished_run
    out = shutil.copytree(finished, tmp_path / "run")
    lines = (out / METRICS_NAME).read_text().splitlines()
    (out / METRICS_NAME).write_text("\n".join([lines[0], "not a record", *lines[1:]]) + "\n")
    assert main(["train", str(recipe), "--out", str(out)]) == 0
    assert "not a record" not in (out / METRICS_NAME).read_text()


def test_the_adapter_is_written_before_the_final_evaluation(finished_run, tmp_path, monkeypatch, capsys):
    """An evaluation that fails after the last step leaves the trained adapter; --resume with another decoding
    then evaluates it again without retraining."""
    recipe, finished = finished_run
    out = tmp_path / "run"

    def failing(*args, **kwargs):
        raise ValueError("evaluation failed")

    monkeypatch.setattr(training, "_final_eval", failing)
    assert main(["train", str(recipe), "--out", str(out)]) == 2
    assert (out / "adapter" / WEIGHTS_NAME).read_bytes() == (finished / "adapter" / WEIGHTS_NAME).read_bytes()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", str(recipe), "generation.max_new_tokens=3", "--out", str(out), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert (out / "adapter" / WEIGHTS_NAME).read_bytes() == (finished / "adapter" / WEIGHTS_NAME).read_bytes()
