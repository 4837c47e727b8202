"""`sensorium compare`: comparison files, the validation split, reuse of finished runs, and the smoke run end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from test_dryrun import refuse_weights

from sensorium import compare, dryrun
from sensorium.cli import main
from sensorium.compare.report import _log_tick_label
from sensorium.config import WEIGHTS_NAME
from sensorium.data import Example
from sensorium.recipe import Recipe

COMPARISONS = sorted((Path(__file__).parents[1] / "recipes" / "compare").glob("*.yaml"))
EASY_VQA = Path(__file__).parents[1] / "recipes" / "compare" / "easy-vqa.yaml"
SCENES = Path(__file__).parents[1] / "recipes" / "compare" / "scenes-caption.yaml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The easy-vqa comparison with --smoke, run once for the tests that read its output."""
    out = tmp_path_factory.mktemp("smoke")
    assert main(["compare", str(EASY_VQA), "--smoke", "--out", str(out)]) == 0
    return out


def test_smoke_writes_the_table_the_json_and_the_plot(smoke_run, capsys):
    methods = list(yaml.safe_load(EASY_VQA.read_text())["methods"])
    summary = json.loads((smoke_run / "comparison.json").read_text())
    assert [m["name"] for m in summary["methods"]] == methods
    assert (summary["metric"], summary["baseline"], summary["seeds"]) == ("accuracy", "epalm", [0, 1])
    by_name = {m["name"]: m for m in summary["methods"]}
    for result in summary["methods"]:
        # The grid's first two rates tried on validation with the first seed; the best one trained with every seed.
        assert list(result["validation_by_lr"]) == ["0.001", "0.003"]
        assert result["validation_by_lr"][f"{result['chosen_lr']:g}"] == max(result["validation_by_lr"].values())
        assert [run["seed"] for run in result["runs"]] == [0, 1]
        assert all(Path(run["folder"], "adapter", WEIGHTS_NAME).is_file() for run in result["runs"])
        assert all(0 <= run["test"] <= 100 for run in result["runs"])
        assert result["latency_ms_per_sample"] > 0 and result["trainable_parameters"] > 0
    assert all(value == 1 for value in by_name["epalm"]["relative"].values() if value != 0)
    assert by_name["epalm"]["relative"]["score_delta"] == 0
    # The smoke LM has 30 layers of 2 heads, one key/value head of width 8, float32: 1,920 bytes a position.
    assert by_name["epalm"]["kv_bytes_per_sample"] % 1920 == 0
    columns = {name: result["slot_columns"] for name, result in by_name.items()}
    assert columns == {"epalm": 1, "epalm-patches": 4, "limber-1": 1, "limber-all": 16, "mapl": 32,
                       "last-block-only": 1, "first-layers": 1}
    kv = {name: result["kv_bytes_per_sample"] for name, result in by_name.items()}
    assert kv["epalm"] == kv["limber-1"] == kv["last-block-only"] < kv["epalm-patches"] < kv["limber-all"] < kv["mapl"]
    same_size = ("epalm-patches", "last-block-only", "first-layers")  # one shared linear layer, one slot embedding
    assert {by_name[name]["trainable_parameters"] for name in same_size} == {by_name["epalm"]["trainable_parameters"]}

    table = (smoke_run / "comparison.md").read_text()
    assert table.startswith("| method | lr (grid) | accuracy (mean ± std, 2 seeds) | vs epalm |")
    assert all(f"| {name} | **" in table for name in methods)
    with Image.open(smoke_run / "comparison.png") as plot:
        assert plot.format == "PNG" and plot.width > 500


@pytest.mark.parametrize(("limits", "labelled", "blank"), [
    ((2000, 20000), [2000, 3000, 5000, 10000, 20000], [4000, 6000, 7000, 9000]),  # a decade: 1, 2, 3, 5 only
    ((13, 22), [14, 16, 18, 20], []),  # under half a decade: every tick
])
def test_log_axes_are_labelled_in_plain_numbers_that_do_not_overlap(limits, labelled, blank):
    from matplotlib.figure import Figure

    axes = Figure().subplots()
    axes.set(xscale="log", xlim=limits)
    label = _log_tick_label(axes)
    assert [label(value, 0) for value in labelled] == [f"{value:g}" for value in labelled]
    assert all(label(value, 0) == "" for value in blank)


def test_a_second_run_reuses_every_finished_run(smoke_run, monkeypatch, capsys):
    first = json.loads((smoke_run / "comparison.json").read_text())
    monkeypatch.setattr("sensorium.train.train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    comparison = compare.smoke(compare.load_comparison(EASY_VQA), smoke_run)
    comparison = replace(comparison, methods=comparison.methods[:2])
    second = compare.run(comparison)
    for before, after in zip(first["methods"][:2], second["methods"], strict=True):
        assert after["runs"] == before["runs"] and after["chosen_lr"] == before["chosen_lr"]


def test_worker_processes_train_the_same_runs_as_one_process(smoke_run, tmp_path, monkeypatch):
    """--jobs 2: methods train in two spawned workers; the main process then only reads their runs and
    measures costs, and every run (same rate chosen, same seeds) scores as in the one-process comparison."""
    # The workers start with as many threads as the one-process runs had: another split of a sum rounds
    # differently, and a few training steps can carry that to an answer.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    out = tmp_path / "jobs"
    assert main(["compare", str(EASY_VQA), "--smoke", "--out", str(out), "--jobs", "2"]) == 0
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["jobs"] == 2 and len(summary["methods"]) == len(yaml.safe_load(EASY_VQA.read_text())["methods"])
    for result in summary["methods"]:
        for run in result["runs"]:
            alone = smoke_run / Path(run["folder"]).relative_to(out)
            assert run["test"] == json.loads((alone / compare.TEST_RESULT).read_text())["score"]
            assert run["validation"] == json.loads((alone / "summary.json").read_text())["accuracy"]


def test_a_run_is_reused_only_with_the_recipe_it_was_trained_with(tmp_path, monkeypatch):
    recipe = Recipe.from_dict({"out": str(tmp_path / "run")})
    monkeypatch.setattr("sensorium.train.train", lambda recipe, restart: {"trained": recipe.training.max_steps})
    assert compare.trained(recipe) == {"trained": 1000}
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"from": "the folder"}))  # as train() writes it
    assert compare.trained(recipe) == {"from": "the folder"}
    (tmp_path / "run" / compare.TEST_RESULT).write_text(json.dumps({"score": 1.0}))
    recipe.training.max_steps = 10
    assert compare.trained(recipe) == {"trained": 10}
    assert not (tmp_path / "run" / compare.TEST_RESULT).exists(), "a test score of the old run would be reused"


def test_caption_comparisons_score_cider(tmp_path, monkeypatch):
    monkeypatch.setattr("sensorium.metrics.captions.shutil.which", lambda name: None)  # no Java start-ups: seconds
    comparison = compare.smoke(compare.load_comparison(SCENES), tmp_path)
    comparison = replace(comparison, methods=[m for m in comparison.methods if m.name in ("epalm", "limber-all")],
                         seeds=[0])
    summary = compare.run(comparison)
    assert (summary["metric"], summary["task"]) == ("CIDEr", "caption")
    assert "| CIDEr (mean ± std, 1 seeds) |" in (tmp_path / "comparison.md").read_text()
    # Captions are decoded with 3 beams: the KV cache per sample counts every beam.
    epalm, limber = summary["methods"]
    assert limber["kv_bytes_per_sample"] - epalm["kv_bytes_per_sample"] == 3 * 15 * 1920


@pytest.mark.parametrize("path", COMPARISONS, ids=[p.name for p in COMPARISONS])
def test_every_method_of_every_comparison_passes_the_dry_run(path, monkeypatch, tmp_path, capsys):
    refuse_weights(monkeypatch)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(dryrun, "default_config_file", str(tmp_path / "no-accelerate-config.yaml"))
    assert main(["compare", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    methods = yaml.safe_load(path.read_text())["methods"]
    assert out.count("recipe valid") == len(methods) and "INVALID" not in out


def test_the_ablations_are_the_papers(capsys):
    comparison = compare.load_comparison(EASY_VQA)
    models = {m.name: m.overrides.get("model", {}) for m in comparison.methods}
    assert models["last-block-only"] == {"num_blocks": 1}
    assert models["first-layers"] == {"inject_layers": list(range(11))}  # as many layers as the paper's 17..27


def test_validation_holds_out_whole_media_files():
    examples = [Example(f"{i // 3}.png", f"question {i}", ["yes"]) for i in range(30)]  # 10 images, 3 questions
    training, validation = compare.split_validation(examples, 7)
    assert len(validation) == 9 and len(training) == 21  # three images: the first that reach 7 questions
    assert not {e.media for e in training} & {e.media for e in validation}
    assert compare.split_validation(examples, 7) == (training, validation)  # seeded
    with pytest.raises(ValueError, match="no training data"):
        compare.split_validation(examples, 30)


def test_method_recipes_keep_the_data_and_scale_the_prompt_rate():
    base = {"model": {"connector": "epalm"}, "training": {"lr": 1e-3, "prompt_lr": 2e-3},
            "data": {"train": {"format": "easy-vqa", "split": "train"}}}
    merged = compare.merge_recipe(base, {"data": {"train": {"format": "jsonl", "path": "x.jsonl"}}})
    assert merged["data"]["train"] == {"format": "jsonl", "path": "x.jsonl"}  # a data spec is replaced whole
    per_block = {"model": {"shared_linear": False, "connector_options": {"per_block": True}}}
    swapped = compare.merge_recipe(per_block, {"model": {"connector": "mapl", "connector_options": {}}})
    assert swapped["model"] == {"shared_linear": False, "connector": "mapl", "connector_options": {}}
    kept = compare.merge_recipe(per_block, {"model": {"prompt_length": 4}})
    assert kept["model"]["connector_options"] == {"per_block": True}  # options not named stay the base's
    comparison = compare.Comparison(base, [compare.Method("mapl", {"model": {"connector": "mapl"}}, [3e-4])], "mapl")
    recipe = compare.method_recipe(comparison, comparison.methods[0], 3e-4, 5, {"train": {"format": "x"}}, Path("o"))
    assert (recipe.model.connector, recipe.training.lr, recipe.training.prompt_lr) == ("mapl", 3e-4, 6e-4)
    assert (recipe.training.seed, recipe.data, recipe.out) == (5, {"train": {"format": "x"}}, "o")


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown setting"),
    ({"methods": {"a": {"data": {}}}, "baseline": "a"}, "may change only model, training"),
    ({"methods": {"a": {"training": {"max_steps": 9}}}, "baseline": "a"}, "changes training.max_steps, which every"),
    ({"baseline": "nope"}, "baseline 'nope' is not one of the methods"),
    ({"methods": {"a": {"model": {"connector": "nope"}}}, "baseline": "a"}, "unknown connector 'nope'"),
    ({"methods": {"a": {"model": {"connector": "mapl", "connector_options": {"layers": 2}}}}, "baseline": "a"},
     "connector 'mapl' has no option layers"),
    ({"methods": {"a": {"model": {"colour": 1}}}, "baseline": "a"}, "unknown adapter setting"),
])
def test_bad_comparison_files_are_refused_before_training(change, message, tmp_path):
    values = {**yaml.safe_load(EASY_VQA.read_text()), "recipe": str(EASY_VQA.parent.parent / "easy-vqa.yaml"),
              **change}
    path = tmp_path / "comparison.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match=message):
        compare.load_comparison(path)


LADDER = Path(__file__).parents[1] / "recipes" / "compare" / "ladder-easy-vqa.yaml"


def test_a_ladder_scores_each_method_over_its_own_lm_and_as_it_was_trained(tmp_path, monkeypatch):
    """Methods of two frozen LMs, each with a blind and an oracle run: every run is tested over the LM it was
    trained on (each LM loaded once), a blind run without its image, an oracle with the truth as text; the
    report gives accuracy per answer type."""
    from sensorium.compare import measure
    from sensorium.model import PerceptualLM

    names = ["smollm2-135m", "smollm2-135m-blind", "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-oracle"]
    comparison = compare.smoke(compare.only(compare.load_comparison(LADDER), names), tmp_path)
    comparison.recipe["data"] = {"train": {"format": "easy-vqa", "split": "train", "limit": 24},
                                 "eval": {"format": "easy-vqa", "split": "test", "limit": 6}}
    comparison = replace(comparison, seeds=[0], validation=6)
    loaded, contexts, zeroed = [], [], []
    load_lm = measure.load_lm
    monkeypatch.setattr(measure, "load_lm", lambda name, *a, **k: (
        loaded.append(Path(name).name), load_lm(name, *a, **k))[1])
    prompt_ids, generate = PerceptualLM.prompt_ids, PerceptualLM.generate
    monkeypatch.setattr(PerceptualLM, "prompt_ids", lambda self, questions, context=None: (
        contexts.append(context is not None), prompt_ids(self, questions, context))[1])
    monkeypatch.setattr(PerceptualLM, "generate", lambda self, features, *a, **k: (
        zeroed.append(bool((features == 0).all())), generate(self, features, *a, **k))[1])
    summary = compare.run(comparison)

    assert [m["name"] for m in summary["methods"]] == names
    assert loaded == ["lm", "lm-qwen2.5-coder-0.5b"], "each method's own LM (the base recipe's: lm), each loaded once"
    assert True in contexts and False in contexts, "the oracle's questions come with the truth, the others' not"
    assert True in zeroed and False in zeroed
    for result in summary["methods"]:
        run = Path(result["runs"][0]["folder"])
        assert set(result["per_type_mean"]) <= {"yes/no", "color", "shape"} and result["per_type_mean"]
        assert len((run / "test-predictions.jsonl").read_text().splitlines()) == 6
    table = (tmp_path / "comparison.md").read_text()
    assert "| method | accuracy | " in table and "| qwen2.5-coder-0.5b-oracle | " in table
    lms = {m["name"]: (Path(m["lm"]).name, m["lm_parameters"]) for m in summary["methods"]}
    assert lms["qwen2.5-coder-0.5b"] == lms["qwen2.5-coder-0.5b-oracle"] != lms["smollm2-135m"]
    with Image.open(tmp_path / "ladder.png") as plot:
        assert plot.format == "PNG"


@pytest.mark.parametrize(("name", "lm", "series"), [
    ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b", "eP-ALM"),
    ("qwen2.5-coder-0.5b-oracle", "qwen2.5-coder-0.5b", "oracle"),
    ("gemma-every-layer", "/models/gemma", "every-layer"), ("epalm", "smollm2-135m", "epalm"),
])
def test_ladder_series_are_the_method_names_without_their_lm(name, lm, series):
    from sensorium.compare.report import series_name

    assert series_name({"name": name, "lm": lm}) == series


def test_methods_are_chosen_by_name_with_the_baseline_among_them():
    comparison = compare.load_comparison(LADDER)
    assert [m.name for m in compare.only(comparison, ["gemma3-270m", "smollm2-135m"]).methods] == \
        ["smollm2-135m", "gemma3-270m"]
    with pytest.raises(ValueError, match="must include the baseline 'smollm2-135m'"):
        compare.only(comparison, ["gemma3-270m"])
    with pytest.raises(ValueError, match="no method 'llama' in the comparison"):
        compare.only(comparison, ["smollm2-135m", "llama"])
