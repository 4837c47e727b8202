"""`sensorium train RECIPE --dry-run`: every recipe validates without weights; invalid ones exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from transformers import (
    ASTConfig,
    AutoModel,
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    OPTConfig,
    PreTrainedModel,
    Qwen2Config,
    TimesformerConfig,
    ViTConfig,
    WhisperConfig,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from sensorium import AdapterConfig, PerceptualLM, dryrun, packaged, zoo
from sensorium.cli import main
from sensorium.dryrun import PUBLISHED, dry_run
from sensorium.encoders.dinov2_onnx import dinov2_small_config
from sensorium.encoders.yamnet import YamNet
from sensorium.layout import LMFacts

# Training recipes; recipes/accelerate/ holds launcher configs (accelerate config files), recipes/compare/
# comparison files (`sensorium compare`, whose methods' recipes tests/test_compare.py dry-runs) and recipes/lmms-eval/
# an lmms-eval task (tests/test_lmms_eval.py runs it), not recipes.
REPO = Path(__file__).parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml")
                 if p.parent.name not in ("accelerate", "compare", "lmms-eval"))


def _refuse(*args, **kwargs):
    raise AssertionError("the dry run tried to load weights")


def refuse_weights(patch: pytest.MonkeyPatch) -> None:
    """Any attempt to read weights or convert a packaged model fails the test."""
    for model_class in (PreTrainedModel, AutoModel, AutoModelForCausalLM):
        patch.setattr(model_class, "from_pretrained", classmethod(_refuse))
    patch.setattr(zoo, "resolve", _refuse)


@pytest.fixture
def no_weights(monkeypatch):
    refuse_weights(monkeypatch)


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch, tmp_path):
    """Neither a launcher's WORLD_SIZE nor this machine's accelerate config decides the process count."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(dryrun, "default_config_file", str(tmp_path / "no-accelerate-config.yaml"))


def dry(args: list[str], capsys) -> tuple[int, str]:
    code = main(["train", *args, "--dry-run"])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_passes_the_dry_run(recipe, no_weights, capsys):
    code, out = dry([str(recipe), "--num-processes", "2"], capsys)
    assert code == 0, out
    assert "recipe valid" in out and "no weights were loaded" in out
    assert "2 (--num-processes)" in out and "peak ≈" in out


def memory_table(out: str) -> dict[int, tuple[float, float]]:
    """The dry run's memory table: GiB per GPU under DDP and sharded, by process count."""
    rows = re.findall(r"^ +(\d+) +\d+ +([\d.]+) GiB +([\d.]+) GiB$", out, re.MULTILINE)
    return {int(processes): (float(ddp), float(sharded)) for processes, ddp, sharded in rows}


def test_the_memory_table_compares_ddp_with_a_sharded_lm(no_weights, capsys):
    """A 70B LM (sized from its published architecture) fits 80 GB GPUs only sharded: sharding divides the frozen
    weights by the process count, where DDP's copy per GPU stays whole; with one process there is nothing to shard."""
    code, out = dry([str(REPO / "recipes" / "scale" / "vqav2-llama3-70b-vitb16.yaml"), "--num-processes", "8"], capsys)
    assert code == 0, out
    assert "frozen LM weights (bfloat16, as training holds them on a GPU): 131.4 GiB" in out
    table = memory_table(out)
    assert sorted(table) == [1, 2, 4, 8]
    assert table[1][0] == table[1][1] > 131.4
    assert table[8][0] > 131.4 > 80 > table[8][1]
    weights_dropped = [ddp - sharded for ddp, sharded in table.values()]
    assert weights_dropped == sorted(weights_dropped)  # more processes, a smaller share of the LM each

    code, out = dry([str(REPO / "recipes" / "paper" / "vqav2-opt2.7b-vitb16.yaml"), "--num-processes", "4"], capsys)
    assert code == 0 and "frozen LM weights (float32, as training holds them on a GPU): 9.9 GiB" in out
    assert sorted(memory_table(out)) == [1, 2, 4, 8]


def write_recipe(folder: Path, values: dict) -> str:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture
def manifest(tmp_path):
    """Six answered questions on three images, and one question whose image is missing."""
    lines = []
    for name, rgb in {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"{name}.png")
        lines += [{"media": f"{name}.png", "question": "what color ?", "answers": [name]},
                  {"media": f"{name}.png", "question": "is it red ?", "answers": ["yes" if name == "red" else "no"]}]
    lines.append({"media": "gone.png", "question": "what color ?", "answers": ["red"]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def tiny_values(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path) -> dict:
    return {"model": {"lm": tiny_lm_folder("opt_proj"), "encoder": tiny_vit_folder, "num_blocks": 2,
                      "prompt_length": 3},
            "data": {"train": {"format": "jsonl", "path": manifest}},
            "training": {"batch_size": 4, "max_steps": 4, "warmup_steps": 1},
            "out": str(tmp_path / "run")}


def test_dry_run_sizes_and_counts_match_the_real_model(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path,
                                                       no_weights, capsys):
    values = tiny_values(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path)
    code, out = dry([write_recipe(tmp_path, values)], capsys)
    assert code == 0, out
    assert "train: jsonl, 7 examples, 4 distinct media files" in out
    assert "1 of 4 sampled media files missing" in out and "gone.png" in out
    assert "2 steps per epoch of 7 examples: max_steps covers 2.29 epochs" in out
    assert "global batch 4 per step = 4 per process x 1" in out
    assert "feature cache of the training media: 4 files x 4 blocks x 32 float32" in out
    assert "recipe valid, 1 warning(s)" in out  # the missing image


def test_dry_run_counts_equal_those_of_the_built_model(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path):
    """Counted on the meta device from the configurations: the same numbers as the loaded model."""
    values = tiny_values(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        refuse_weights(patch)
        report = dry_run(write_recipe(tmp_path, values)).format()
    trainable, total = PerceptualLM(AdapterConfig(**values["model"])).parameter_counts()
    assert f"trainable: {trainable:,} of {total:,} parameters" in report


@pytest.mark.parametrize("change, message", [
    (lambda v: v["model"].update(colour="red"), "unknown adapter setting(s): colour"),
    (lambda v: v.update(optimiser={}), "unknown recipe section(s): optimiser"),
    (lambda v: v["training"].update(batch_size=6), "batch_size=6 (the global batch) must be a multiple of processes"),
    (lambda v: v["training"].update(max_steps=0), "training.max_steps must be >= 1"),
    (lambda v: v["training"].update(warmup_steps=[1]), "training.warmup_steps must be a number, not [1]"),
    (lambda v: v.update(generation={"num_beams": 0}), "generation.num_beams must be >= 1"),
    (lambda v: v["training"].update(mixed_precision=False), "training.mixed_precision 'False' not one of"),
    (lambda v: v["data"]["train"].update(format="coco-wat"), "unknown data format 'coco-wat'"),
    (lambda v: v["data"]["train"].update(images="x"), "unknown argument(s) images"),
    (lambda v: v["data"].update(eval={"format": "vqav2", "questions": "q.json"}), "missing argument(s) images"),
    (lambda v: v.update(generation={"num_beans": 3}), "unknown generation option(s): num_beans"),
    (lambda v: v["model"].update(task="translate"), "unknown task 'translate'"),
    (lambda v: v["model"].update(inject_layers=[2, 7]), "injection layers [2, 7] out of range 0..3"),
    (lambda v: v["model"].update(num_blocks=9), "num_blocks=9 but encoder"),
    (lambda v: v["model"].update(lm="no such model"), "not a packaged name, an existing folder or file, nor a hub id"),
])
def test_invalid_recipes_are_reported_and_exit_2(change, message, tiny_lm_folder, tiny_vit_folder, manifest,
                                                  tmp_path, no_weights, capsys):
    values = tiny_values(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path)
    change(values)
    code, out = dry([write_recipe(tmp_path, values), "--num-processes", "4"], capsys)
    assert code == 2, out
    assert message in out and "recipe INVALID" in out


def test_processes_come_from_the_launcher_environment(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path,
                                                      no_weights, monkeypatch, capsys):
    recipe = write_recipe(tmp_path, tiny_values(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path))
    accelerate_config = tmp_path / "default_config.yaml"
    accelerate_config.write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU", "num_processes": 2}))
    monkeypatch.setattr(dryrun, "default_config_file", str(accelerate_config))
    code, out = dry([recipe], capsys)
    assert code == 0 and f"2 (accelerate config {accelerate_config})" in out and "2 per process x 2" in out
    monkeypatch.setenv("WORLD_SIZE", "3")  # what accelerate launch / torchrun set: it wins
    code, out = dry([recipe], capsys)
    assert code == 2 and "3 (WORLD_SIZE of this environment)" in out and "multiple of processes (3)" in out


def test_an_encoder_decoder_lm_is_refused_from_its_config(tiny_vit_folder, manifest, tmp_path, no_weights,
                                                         capsys):
    from transformers import T5Config

    T5Config(vocab_size=40, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4).save_pretrained(tmp_path / "t5")
    values = {"model": {"lm": str(tmp_path / "t5"), "encoder": tiny_vit_folder, "num_blocks": 2},
              "data": {"train": {"format": "jsonl", "path": manifest}}}
    code, out = dry([write_recipe(tmp_path, values)], capsys)
    assert code == 2 and "is an encoder-decoder model" in out


def test_missing_recipe_is_one_line_error(capsys):
    assert main(["train", "no-such.yaml", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "sensorium: error: no-such.yaml: recipe not found"


def _meta_count(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


PUBLISHED_ARCHITECTURES = {
    "facebook/opt-2.7b": (lambda: AutoModelForCausalLM.from_config(OPTConfig(
        hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32, vocab_size=50272,
        max_position_embeddings=2048, word_embed_proj_dim=2560)), 32, 2560),
    "facebook/opt-6.7b": (lambda: AutoModelForCausalLM.from_config(OPTConfig(
        hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32, vocab_size=50272,
        max_position_embeddings=2048, word_embed_proj_dim=4096)), 32, 4096),
    "meta-llama/Meta-Llama-3-70B": (lambda: AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
        vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=False)), 80, 8192),
    "google/vit-base-patch16-224": (lambda: AutoModel.from_config(ViTConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224,
        patch_size=16)), 12, 768),
    "smollm2-135m": (lambda: AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        vocab_size=49152, tie_word_embeddings=True)), 30, 576),
    "gemma3-270m": (lambda: AutoModelForCausalLM.from_config(Gemma3TextConfig(
        hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
        head_dim=256, vocab_size=262144, tie_word_embeddings=True)), 18, 640),
    "qwen2.5-coder-0.5b": (lambda: AutoModelForCausalLM.from_config(Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        vocab_size=151936, tie_word_embeddings=False)), 24, 896),
    "qwen2.5-coder-1.5b": (lambda: AutoModelForCausalLM.from_config(Qwen2Config(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        vocab_size=151936, tie_word_embeddings=False)), 28, 1536),
    "efficientnet-lite0": (lambda: EfficientNet.from_name("efficientnet-lite0"), 16, 320),
    "dinov2-small": (lambda: AutoModel.from_config(dinov2_small_config()), 12, 384),
    "MIT/ast-finetuned-audioset-10-10-0.4593": (lambda: AutoModel.from_config(ASTConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16,
        frequency_stride=10, time_stride=10, max_length=1024, num_mel_bins=128)), 12, 768),
    "facebook/timesformer-base-finetuned-k600": (lambda: AutoModel.from_config(TimesformerConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224,
        patch_size=16, num_frames=8)), 12, 768),
    "whisper-tiny": (lambda: WhisperEncoder(WhisperConfig(
        d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80,
        max_source_positions=1500)), 4, 384),
    "yamnet": (YamNet, 14, 1024),
}


# Sizes the dry run uses without a configuration: hub models' fallbacks and every packaged model's.
PUBLISHED_FACTS = {**PUBLISHED, **{model.name: model.facts for model in packaged.MODELS}}


@pytest.mark.parametrize("name", sorted(PUBLISHED_FACTS))
def test_published_sizes_match_their_architectures(name):
    build, depth, width = PUBLISHED_ARCHITECTURES[name]
    facts = PUBLISHED_FACTS[name]
    layers = facts.layers if isinstance(facts, LMFacts) else facts.blocks
    assert (facts.parameters, layers, facts.width) == (_meta_count(build), depth, width)


def test_hub_ids_are_looked_up_in_the_hugging_face_cache_offline(tiny_lm_folder, tiny_vit_folder, manifest,
                                                                 tmp_path, no_weights, monkeypatch, capsys):
    """A hub id whose files sit in the HF cache is sized from its cached configuration."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-opt" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text((Path(tiny_lm_folder("opt")) / "config.json").read_text())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    values = tiny_values(tiny_lm_folder, tiny_vit_folder, manifest, tmp_path)
    values["model"]["lm"] = "acme/tiny-opt"
    recipe = write_recipe(tmp_path, values)

    code, out = dry([recipe], capsys)
    assert code == 0 and "configuration in the Hugging Face cache, weights not" in out
    assert "language model: OPTForCausalLM" in out and "4 decoder layers of width 32" in out
    (snapshot / "model.safetensors").write_bytes(b"")
    code, out = dry([recipe], capsys)
    assert code == 0 and "language model 'acme/tiny-opt': in the Hugging Face cache" in out

    values["model"]["lm"] = "acme/elsewhere"
    code, out = dry([write_recipe(tmp_path, values)], capsys)
    assert code == 0 and "'acme/elsewhere': not available offline; would be downloaded from the hub" in out
    assert "size unknown offline" in out and "not estimated" in out


def test_a_converted_audio_encoder_is_sized_from_its_configuration(monkeypatch, capsys):
    """Whisper's configuration describes encoder and decoder; the dry run sizes the encoder alone."""
    zoo.resolve("whisper-tiny")
    refuse_weights(monkeypatch)
    code, out = dry([str(Path(__file__).parents[1] / "recipes" / "audio-qa.yaml")], capsys)
    assert code == 0, out
    assert "encoder: WhisperEncoder, 8,208,384 parameters, 4 blocks of width 384" in out
    assert "receive the tokens of 4 encoder blocks (0, 1, 2, 3)" in out
