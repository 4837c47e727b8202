"""Merging adapters: the weighted average, refusal of mismatched layouts, greedy soups, and the commands."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, save_steered_adapter
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sensorium import AdapterConfig, PerceptualLM
from sensorium.cli import main
from sensorium.errors import BadInputError
from sensorium.merge import (
    HeldOutScorer,
    average,
    greedy_soup,
    interpolation,
    merge,
    normalised,
    save,
)
from sensorium.trained import Ingredient, read_ingredient


def config(tiny_lm_folder, tiny_vit_folder, **settings) -> AdapterConfig:
    return AdapterConfig(**{"lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "num_blocks": 2,
                            "inject_layers": [2, 3], **settings})


@pytest.fixture(scope="module")
def adapters(tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> list[str]:
    """Three adapters of one layout with different random tensors."""
    return [save_steered_adapter(config(tiny_lm_folder, tiny_vit_folder), seed, tmp_path_factory.mktemp(f"a{seed}"))
            for seed in (1, 2, 3)]


def test_merge_is_the_normalised_weighted_average_of_every_tensor(adapters):
    first, second = read_ingredient(adapters[0]), read_ingredient(adapters[1])
    soup = merge([first, second], [1, 3])  # normalised to 0.25, 0.75
    assert set(soup.state) == set(first.state)
    for name, tensor in soup.state.items():
        torch.testing.assert_close(tensor, 0.25 * first.state[name] + 0.75 * second.state[name])
    assert soup.config.merged_from == {"ingredients": [str(first.folder), str(second.folder)],
                                            "weights": [0.25, 0.75]}
    assert not torch.equal(soup.state["prompt"], first.state["prompt"])


def test_uniform_weights_and_bad_weights():
    assert normalised(None, 4) == [0.25] * 4
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError):
            normalised(bad, 2)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=2, max_size=6))
def test_any_weights_are_refused_or_normalised_to_a_finite_average(weights):
    """Huge, tiny, subnormal, infinite or NaN: weights are refused, or they sum to one in their own proportions."""
    valid = all(math.isfinite(w) and w >= 0 for w in weights) and max(weights) > 0
    if not valid:
        with pytest.raises(ValueError):
            normalised(weights, len(weights))
        return
    result = normalised(weights, len(weights))
    assert all(math.isfinite(r) and 0 <= r <= 1 for r in result)
    assert math.isclose(math.fsum(result), 1, rel_tol=1e-12)
    largest = weights.index(max(weights))
    for weight, share in zip(weights, result, strict=True):
        assert math.isclose(share, weight / weights[largest] * result[largest], rel_tol=1e-9, abs_tol=1e-300)


def test_merge_of_the_largest_weights_is_their_average(adapters, tmp_path, capsys):
    assert main(["merge", *adapters[:2], "--weights", "1e308,1e308", "--out", str(tmp_path / "soup")]) == 0
    assert "weights 0.500, 0.500" in capsys.readouterr().out
    soup, first = read_ingredient(tmp_path / "soup"), read_ingredient(adapters[0])
    assert not torch.equal(soup.state["prompt"], torch.zeros_like(first.state["prompt"]))


def test_adapters_of_different_layouts_are_refused_in_one_line_naming_the_difference(
        adapters, tiny_lm_folder, tiny_vit_folder, tmp_path):
    longer = save_steered_adapter(config(tiny_lm_folder, tiny_vit_folder, prompt_length=2), 4, tmp_path / "p2")
    with pytest.raises(BadInputError) as error:
        merge([read_ingredient(adapters[0]), read_ingredient(longer)])
    message = str(error.value)
    assert "\n" not in message and "prompt_length: 1" in message and "2 in" in message
    other_lm = save_steered_adapter(AdapterConfig(lm=tiny_lm_folder("gpt2"), encoder=tiny_vit_folder, num_blocks=2,
                                                  inject_layers=[2, 3]), 5, tmp_path / "gpt2")
    with pytest.raises(BadInputError, match="lm: "):
        merge([read_ingredient(adapters[0]), read_ingredient(other_lm)])


def test_a_soup_saves_as_an_ordinary_adapter_that_reloads_to_the_same_answers(adapters, image, tmp_path):
    soup = merge([read_ingredient(path) for path in adapters])
    folder = save(soup, tmp_path / "soup")
    reloaded = PerceptualLM.from_pretrained(folder)
    direct = PerceptualLM(soup.config)
    direct.load_adapter_state(soup.state)
    questions = ["what color ?"]
    assert reloaded.ask([image], questions, max_new_tokens=4) == direct.ask([image], questions, max_new_tokens=4)
    assert reloaded.config.merged_from["weights"] == pytest.approx([1 / 3] * 3)


def test_greedy_soup_keeps_an_ingredient_only_when_the_held_out_score_does_not_drop():
    target = torch.tensor([1.0, 1.0])

    def ingredient(name: str, values: list[float]) -> Ingredient:
        return Ingredient(name, None, {"w": torch.tensor(values)})

    def score(state) -> float:  # higher is better: closeness to a target the average approaches
        return -float((state["w"] - target).norm())

    helps, hurts = ingredient("helps", [1.0, 1.5]), ingredient("hurts", [5.0, -5.0])
    best = ingredient("best", [1.0, 0.6])
    chosen, soup_score, records = greedy_soup([helps, hurts, best], score, log=lambda _: None)
    assert [i.folder for i in chosen] == ["best", "helps"]
    assert soup_score == pytest.approx(score(average([best.state, helps.state], [0.5, 0.5])))
    assert soup_score >= max(score(i.state) for i in (helps, hurts, best))
    assert [r["kept"] for r in records] == [True, True, False]


def test_interpolation_runs_from_the_first_adapter_to_the_second(adapters):
    first, second = read_ingredient(adapters[0]), read_ingredient(adapters[1])
    path = interpolation(first, second, steps=11)
    assert [a for a, _ in path] == pytest.approx([i / 10 for i in range(11)])
    torch.testing.assert_close(path[0][1]["prompt"], first.state["prompt"])
    torch.testing.assert_close(path[-1][1]["prompt"], second.state["prompt"])
    torch.testing.assert_close(path[3][1]["prompt"], 0.7 * first.state["prompt"] + 0.3 * second.state["prompt"])


@pytest.fixture
def held_out(tmp_path) -> str:
    lines = []
    for name, rgb in {"red": (255, 0, 0), "blue": (0, 0, 255)}.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"{name}.png")
        lines.append({"media": f"{name}.png", "question": "what color ?", "answers": [name]})
    path = tmp_path / "validation.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_held_out_scorer_scores_swapped_tensors_like_a_loaded_adapter(adapters, held_out):
    from sensorium.evaluate import headline, predict_all, report
    from sensorium.recipe import TrainingOptions
    from sensorium.train import cached_features, task_examples

    ingredient = read_ingredient(adapters[1])
    scorer = HeldOutScorer(ingredient, {"format": "jsonl", "path": held_out})
    model = PerceptualLM.from_pretrained(adapters[1])
    options = TrainingOptions()
    examples, features, row_of, _ = cached_features(model, task_examples({"format": "jsonl", "path": held_out},
                                                                          options), options, skip_bad=False)
    expected = headline(report("vqa", predict_all(model, examples, features, row_of, progress=False)))[1]
    assert scorer(ingredient.state) == expected


def test_merge_and_soup_commands_write_adapters_that_eval_reads(adapters, held_out, tmp_path, capsys):
    assert main(["merge", *adapters[:2], "--weights", "0.5,0.5", "--out", str(tmp_path / "merged")]) == 0
    assert "merged 2 adapters (weights 0.500, 0.500)" in capsys.readouterr().out
    assert main(["soup", *adapters, "--greedy", "--data", held_out, "--out", str(tmp_path / "greedy")]) == 0
    assert "greedy soup of" in capsys.readouterr().out
    predictions = tmp_path / "predictions.jsonl"
    assert main(["eval", str(tmp_path / "greedy"), "--data", held_out, "--predictions", str(predictions)]) == 0
    assert len(predictions.read_text().splitlines()) == 2


def test_merge_command_refuses_mismatched_adapters_in_one_line(adapters, tiny_lm_folder, tiny_vit_folder, tmp_path,
                                                               capsys):
    caption = save_steered_adapter(config(tiny_lm_folder, tiny_vit_folder, num_blocks=3), 6, tmp_path / "three")
    assert main(["merge", adapters[0], caption, "--out", str(tmp_path / "x")]) != 0
    assert "num_blocks: 2" in one_line_error(capsys)


def test_interpolate_command_scores_both_tasks_at_every_weight(adapters, tiny_lm_folder, tiny_vit_folder, held_out,
                                                               tmp_path, capsys):
    captions = save_steered_adapter(config(tiny_lm_folder, tiny_vit_folder, task="caption"), 7, tmp_path / "cap")
    caption_data = tmp_path / "captions.jsonl"
    caption_data.write_text("".join(json.dumps({"media": str(Path(held_out).parent / f"{name}.png"),
                                                "captions": [f"a {name} square"]}) + "\n" for name in ("red", "blue")))
    assert main(["interpolate", adapters[0], captions, "--first-data", held_out, "--second-data", str(caption_data),
                 "--steps", "3", "--out", str(tmp_path / "path")]) == 0
    table = json.loads((tmp_path / "path" / "interpolation.json").read_text())
    assert [row["alpha"] for row in table["rows"]] == [0.0, 0.5, 1.0]
    assert table["labels"][0].startswith("accuracy (vqa") and table["labels"][1].startswith("CIDEr (caption")
    assert (tmp_path / "path" / "interpolation.png").stat().st_size > 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 4  # header and three weights
    # Each adapter is scored on its own task's data: a caption adapter on questions is refused in one line.
    assert main(["interpolate", adapters[0], captions, "--first-data", held_out, "--second-data", held_out,
                 "--steps", "3", "--out", str(tmp_path / "wrong")]) == 2
    assert "a caption adapter scored on vqa data" in one_line_error(capsys)


def test_a_blind_adapter_is_not_averaged_with_a_seeing_one(adapters, tiny_lm_folder, tiny_vit_folder, tmp_path):
    blind = config(tiny_lm_folder, tiny_vit_folder, training={"training": {"blind": True}})
    folder = save_steered_adapter(blind, 8, tmp_path / "blind")
    with pytest.raises(BadInputError, match="trained input: {'blind': False"):
        merge([read_ingredient(adapters[0]), read_ingredient(folder)])


def test_a_question_adapter_merged_with_a_caption_adapter_does_both(tiny_lm_folder, tiny_vit_folder, tmp_path):
    vqa = save_steered_adapter(config(tiny_lm_folder, tiny_vit_folder, generation={"max_new_tokens": 4}), 1,
                               tmp_path / "vqa")
    captions = save_steered_adapter(config(tiny_lm_folder, tiny_vit_folder, task="caption",
                                           generation={"num_beams": 2}), 2, tmp_path / "captions")
    both = merge([read_ingredient(captions), read_ingredient(vqa)])
    assert both.config.task == "multitask" and both.config.template == "Question: {question} Answer:"
    assert both.config.generation == {"vqa": {"max_new_tokens": 4}, "caption": {"num_beams": 2}}
    model = PerceptualLM.from_pretrained(save(both, tmp_path / "both"))
    image = Image.new("RGB", (32, 32), (0, 255, 0))
    assert model.ask([image], ["what color ?"]) and model.caption([image])  # one adapter, both verbs
    same = merge([read_ingredient(vqa), read_ingredient(vqa)])
    assert same.config.task == "vqa" and same.config.generation == {"max_new_tokens": 4}
