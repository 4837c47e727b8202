"""The command line: verbs work on a saved adapter; bad input is one line on stderr, exit code 2."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import one_line_error, save_tiny_adapter
from PIL import Image
from safetensors.torch import load_file, save_file

from sensorium import train as training
from sensorium.cli import main
from sensorium.config import CONFIG_NAME, WEIGHTS_NAME


@pytest.fixture(scope="module")
def adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory):
    return save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory.mktemp("adapter"))


def test_ask_prints_an_answer(adapter, image, capsys):
    assert main(["ask", adapter, image, "what color is the shape ?", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("content", [b"", b"GIF89a-truncated", b"plain text"])
def test_ask_on_a_bad_image_names_it(adapter, tmp_path, capsys, content):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    assert main(["ask", adapter, str(bad), "what ?"]) == 2
    assert str(bad) in one_line_error(capsys)


def test_ask_on_a_missing_adapter(image, tmp_path, capsys):
    assert main(["ask", str(tmp_path / "nothing"), image, "what ?"]) == 2
    assert "not an adapter folder" in one_line_error(capsys)


def broken_copy(adapter: str, folder, name: str, tensor: torch.Tensor) -> str:
    """A copy of the adapter whose tensor ``name`` is replaced."""
    shutil.copytree(adapter, folder)
    state = load_file(folder / WEIGHTS_NAME)
    state[name] = tensor
    save_file(state, folder / WEIGHTS_NAME)
    return str(folder)


@pytest.mark.parametrize(("name", "tensor", "reason"), [
    ("connector.linear.weight", torch.ones(1, 32), r"has shape \[1, 32\], the model expects \[32, 32\]"),
    ("prompt", torch.tensor(0.5), r"has shape \[\], the model expects \[1, 32\]"),
    ("slot_embedding", torch.arange(32), "is torch.int64, not floating point"),
    ("prompt", torch.full((1, 32), float("nan")), "holds NaN or infinite values"),
])
def test_ask_refuses_adapter_weights_that_do_not_fit(adapter, image, tmp_path, capsys, name, tensor, reason):
    """copy_ would broadcast a wrong shape into the model: every tensor is checked before any is copied."""
    broken = broken_copy(adapter, tmp_path / "broken", name, tensor)
    assert main(["ask", broken, image, "what ?"]) == 2
    error = one_line_error(capsys)
    assert f"{broken}/{WEIGHTS_NAME}: tensor '{name}'" in error
    assert re.search(reason, error), error


def test_eval_writes_predictions_and_prints_accuracy(adapter, image, tmp_path, capsys):
    manifest = tmp_path / "set.jsonl"
    manifest.write_text(json.dumps({"media": "blue.png", "question": "what color ?", "answers": ["blue"],
                                    "answer_type": "color"}) + "\n")
    predictions = tmp_path / "out" / "predictions.jsonl"
    assert main(["eval", adapter, "--data", str(manifest), "--predictions", str(predictions)]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "color" in out
    [record] = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert record["answers"] == ["blue"] and record["accuracy"] in (0.0, 1.0)


def test_eval_encodes_a_damaged_cache_shard_again_with_a_warning(adapter, image, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SENSORIUM_CACHE", str(tmp_path / "cache"))
    manifest = tmp_path / "set.jsonl"
    manifest.write_text(json.dumps({"media": "blue.png", "question": "what color ?", "answers": ["blue"]}) + "\n")
    clean, again = tmp_path / "clean.jsonl", tmp_path / "again.jsonl"
    assert main(["eval", adapter, "--data", str(manifest), "--predictions", str(clean)]) == 0
    (shard,) = (tmp_path / "cache").rglob("shard-*.safetensors")
    shard.write_bytes(bytes(shard.stat().st_size))  # zeroed
    capsys.readouterr()
    assert main(["eval", adapter, "--data", str(manifest), "--predictions", str(again)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sensorium: warning:")]
    assert warnings == [f"sensorium: warning: feature cache shard {shard}: its content does not match the digest "
                        "written with it; its files are encoded again"]
    assert again.read_text() == clean.read_text()


def test_eval_with_a_missing_file_in_the_manifest(adapter, tmp_path, capsys):
    manifest = tmp_path / "set.jsonl"
    manifest.write_text(json.dumps({"media": "nowhere.png", "question": "what ?", "answers": ["x"]}) + "\n")
    assert main(["eval", adapter, "--data", str(manifest)]) == 2
    assert "nowhere.png: file not found" in one_line_error(capsys)


def test_train_with_a_missing_recipe(capsys):
    assert main(["train", "no-such-recipe.yaml"]) == 2
    assert "no-such-recipe.yaml: recipe not found" in one_line_error(capsys)


@pytest.fixture(scope="module")
def caption_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory):
    return save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory.mktemp("caption-adapter"),
                             task="caption", generation={"max_new_tokens": 4})


def test_caption_prints_one_line_per_image(caption_adapter, image, tmp_path, capsys):
    other = tmp_path / "red.png"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(other)
    assert main(["caption", caption_adapter, image, str(other), "--num-beams", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [image, str(other)]


def test_verbs_refuse_an_adapter_of_the_other_task(adapter, caption_adapter, image, capsys):
    assert main(["caption", adapter, image]) == 2
    assert "trained for vqa" in one_line_error(capsys)
    assert main(["ask", caption_adapter, image, "what ?"]) == 2
    assert "trained for caption" in one_line_error(capsys)


def test_eval_of_captions_prints_coco_metrics_and_writes_coco_results(caption_adapter, image, tmp_path, capsys):
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(json.dumps({"media": "blue.png", "id": 7, "captions": ["a blue square", "blue"]}) + "\n")
    results = tmp_path / "results.json"
    assert main(["eval", caption_adapter, "--data", str(manifest), "--predictions", str(results)]) == 0
    out = capsys.readouterr().out
    assert "CIDEr" in out and "Bleu_4" in out and "SPICE" in out
    [entry] = json.loads(results.read_text())
    assert entry["image_id"] == 7 and isinstance(entry["caption"], str)


def eval_options(adapter: str, image: str, tmp_path, monkeypatch) -> tuple[int, list]:
    """``sensorium eval`` of the adapter on one question about the image: (its exit code, the options its
    features were made with)."""
    manifest = tmp_path / "eval.jsonl"
    manifest.write_text(json.dumps({"media": image, "question": "what color is the shape ?", "answers": ["blue"]}))
    seen, encode = [], training.cached_features
    monkeypatch.setattr(training, "cached_features", lambda model, examples, options, skip_bad: (
        seen.append(options), encode(model, examples, options, skip_bad))[1])
    code = main(["eval", adapter, "--data", str(manifest), "--predictions", str(tmp_path / "predictions.jsonl"),
                 "--max-new-tokens", "2"])
    return code, seen


def test_eval_scores_a_blind_adapter_as_it_was_trained(tiny_lm_folder, tiny_vit_folder, image, tmp_path, monkeypatch):
    """The recipe training recorded in the adapter's config says it was trained blind: evaluated blind too."""
    blind = save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path / "blind",
                              training={"training": {"blind": True}, "eval_batch_size": 8})
    code, options = eval_options(blind, image, tmp_path, monkeypatch)
    assert code == 0 and [(o.blind, o.oracle) for o in options] == [(True, False)]


def test_eval_refuses_a_recorded_recipe_the_schema_refuses(tiny_lm_folder, tiny_vit_folder, image, tmp_path,
                                                            monkeypatch, capsys):
    adapter = save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path / "adapter",
                                training={"training": {"blind": "yes"}})
    assert eval_options(adapter, image, tmp_path, monkeypatch) == (2, [])
    assert (f"{tmp_path / 'adapter' / CONFIG_NAME}: training (the recipe it was trained with): training.blind must "
            "be true or false, not 'yes'") in one_line_error(capsys)


def test_ask_with_an_int8_frozen_lm_answers_close_to_float32(adapter, image, capsys):
    from sensorium import load
    from sensorium.lm import weight_bytes_per_token

    assert main(["ask", adapter, image, "what color ?", "--dtype", "int8", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()
    full, int8 = load(adapter), load(adapter, weights="int8")
    assert weight_bytes_per_token(int8.lm) < weight_bytes_per_token(full.lm) / 2
    # Weight-only int8 keeps each output row's scale: the first-token scores stay close to float32's.
    embeds, mask = full._embed(full.prompt_ids(["what color ?"]))
    with torch.no_grad():
        first = full.lm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
        second = int8.lm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
    assert torch.nn.functional.cosine_similarity(first, second, dim=0) > 0.99


def test_auto_weights_follow_the_device(monkeypatch):
    """auto: bf16 where the hardware multiplies it natively, float32 on CPUs that emulate it; never int8."""
    from sensorium import lm

    monkeypatch.setenv(lm.NATIVE_BF16_ENV, "0")
    assert lm.weight_format("auto", "cpu") == "float32"
    monkeypatch.setenv(lm.NATIVE_BF16_ENV, "1")
    assert lm.weight_format("auto", "cpu") == "bfloat16"
    assert lm.weight_format("auto", "cpu", captions=True) == "float32"  # bf16 moved CIDEr: not auto for captions
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert lm.weight_format("auto", "cuda") == "float16"
    assert lm.weight_format("auto", "cuda", captions=True) == "float32"
    assert lm.weight_format("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="unknown weight format 'int4'; available: auto, float32"):
        lm.weight_format("int4")


def test_ask_holds_the_lm_as_auto_decides(adapter, caption_adapter, image, monkeypatch, capsys):
    from sensorium import lm, model

    monkeypatch.setenv(lm.NATIVE_BF16_ENV, "1")
    loaded = []

    def load_lm(name, dtype, device_map):
        loaded.append(dtype)
        return lm.load_lm(name, dtype, device_map)

    monkeypatch.setattr(model, "load_lm", load_lm)
    assert main(["ask", adapter, image, "what color ?", "--max-new-tokens", "2"]) == 0
    assert loaded == [torch.bfloat16] and capsys.readouterr().out.strip()
    assert main(["caption", caption_adapter, image, "--max-new-tokens", "2"]) == 0
    assert loaded == [torch.bfloat16, torch.float32]  # a caption adapter keeps float32


def test_data_split_holds_out_whole_media_files_as_manifests(tmp_path, capsys):
    from sensorium.data import read_dataset, write_manifest
    from sensorium.testing import colour_squares

    training, test = colour_squares(tmp_path / "squares", "vqa")
    manifest = tmp_path / "all.jsonl"
    write_manifest(training + test, manifest)
    assert main(["data", "split", str(manifest), "--held-out", "3", "--out", str(tmp_path / "split")]) == 0
    kept = read_dataset({"format": "jsonl", "path": str(tmp_path / "split" / "train.jsonl")})
    held = read_dataset({"format": "jsonl", "path": str(tmp_path / "split" / "held-out.jsonl")})
    assert len(kept) + len(held) == len(training + test) and len(held) >= 3
    assert not {e.media for e in kept} & {e.media for e in held}
    assert "held-out: " in capsys.readouterr().out
    assert main(["data", "split", str(manifest), "--held-out", "1000", "--out", str(tmp_path / "too-much")]) != 0
    assert "would leave no training data" in one_line_error(capsys)
