"""layout.plan: one decision of blocks, layers, widths and feature rows, for the model and the dry run alike."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from sensorium import AdapterConfig, PerceptualLM
from sensorium.dryrun import dry_run
from sensorium.layout import EncoderFacts, LMFacts, kv_cache_bytes, plan, problems
from sensorium.lm import lm_facts
from sensorium.model import encoder_facts

VIT = EncoderFacts("vit", blocks=12, width=384)
VIT_PATCHES = EncoderFacts("vit", blocks=12, width=384, tokens="patches", patch_grid=(16, 16))
VIDEO = EncoderFacts("frames:vit", blocks=12, width=384, frames=8)
SMOLLM = LMFacts(parameters=134_515_008, layers=30, width=576, embedding_width=576, kv_width=192)
OPT_27B = LMFacts(parameters=2_651_596_800, layers=32, width=2560, embedding_width=2560, kv_width=2560)
OPT_350M = LMFacts(parameters=331_196_416, layers=24, width=1024, embedding_width=512, kv_width=1024)


def test_defaults_give_the_papers_layers_and_the_last_blocks():
    layout = plan(AdapterConfig(), VIT, OPT_27B)
    assert layout.layers == tuple(range(18, 30))  # layers 19..30 of OPT's 32, 1-based
    assert layout.blocks == (6, 7, 8, 9, 10, 11)
    assert layout.layer_tokens == (0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5)
    assert plan(AdapterConfig(), VIT, SMOLLM).layers == tuple(range(17, 28))  # the same range of 30 layers
    assert (layout.setup.encoder_dim, layout.setup.lm_dim, layout.setup.blocks) == (384, 2560, 6)


def test_cls_features_keep_every_block_and_read_the_chosen_rows():
    layout = plan(AdapterConfig(encoder_blocks=[2, 5, 11]), VIT, SMOLLM)
    assert (layout.stored_blocks, layout.feature_rows) == (None, (2, 5, 11))
    assert (layout.feature_shape, layout.feature_dtype) == ((12, 384), "float32")


def test_patch_features_keep_the_chosen_blocks_only():
    layout = plan(AdapterConfig(connector="epalm-patches", num_blocks=3), VIT_PATCHES, SMOLLM)
    assert (layout.stored_blocks, layout.feature_rows) == ((9, 10, 11), (0, 1, 2))
    assert (layout.feature_shape, layout.feature_dtype) == ((3, 257, 384), "bfloat16")
    assert layout.setup.patch_grid == (16, 16)


def test_input_connectors_read_one_block_into_the_embeddings_width():
    layout = plan(AdapterConfig(connector="limber-1"), VIT, OPT_350M)
    assert (layout.placement, layout.layers, layout.blocks, layout.layer_tokens) == ("input", (), (11,), ())
    assert layout.setup.lm_dim == 512  # OPT-350m's embeddings; injected tokens take its layers' 1024
    assert plan(AdapterConfig(), VIT, OPT_350M).setup.lm_dim == 1024


def test_time_steps_follow_the_temporal_aggregation():
    assert plan(AdapterConfig(temporal="frames"), VIDEO, SMOLLM).frames == 8
    assert plan(AdapterConfig(temporal="change"), VIDEO, SMOLLM).frames == 2
    mean = plan(AdapterConfig(), VIDEO, SMOLLM)
    assert (mean.frames, mean.feature_shape) == (None, (12, 8, 384))


@pytest.mark.parametrize("settings, encoder, message", [
    ({"encoder_blocks": [0, 12]}, VIT, "encoder blocks [0, 12] out of range 0..11"),
    ({"num_blocks": 13}, VIT, "num_blocks=13 but encoder 'vit' has only 12 blocks"),
    ({"inject_layers": [29, 30]}, VIT, "injection layers [29, 30] out of range 0..29"),
    ({"temporal": "frames"}, VIT, "temporal 'frames' needs an encoder with one token per frame"),
    ({"connector": "mapl"}, VIT, "connector 'mapl' reads patches tokens; encoder 'vit' gives cls"),
    ({"connector": "limber-1", "inject_layers": [3]}, VIT, "writes its tokens into the input: inject_layers applies"),
    ({"connector": "limber-1", "encoder_blocks": [3, 4]}, VIT, "reads one encoder block, not [3, 4]"),
    ({"connector": "limber-1", "temporal": "frames"}, VIDEO, "needs the epalm connector: 'limber-1' cannot keep"),
    ({"connector": "mapl", "connector_options": {"layers": 2}}, VIT_PATCHES, "'mapl' has no option layers"),
    ({"connector": "limber-one"}, VIT, "unknown connector 'limber-one'"),
])
def test_bad_settings_are_one_line_errors(settings, encoder, message):
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        plan(AdapterConfig(**settings), encoder, SMOLLM)
    assert "\n" not in str(refused.value)


def test_every_problem_is_named_at_once():
    found = problems(AdapterConfig(encoder_blocks=[0, 12], inject_layers=[40], temporal="frames"), VIT, SMOLLM)
    assert len(found) == 3
    with pytest.raises(ValueError, match=re.escape("; ".join(found))):
        plan(AdapterConfig(encoder_blocks=[0, 12], inject_layers=[40], temporal="frames"), VIT, SMOLLM)


def test_kv_cache_counts_keys_and_values_of_every_layer():
    assert kv_cache_bytes(SMOLLM, tokens=10, bytes_per_value=2) == 2 * 30 * 192 * 10 * 2


@pytest.mark.parametrize("settings", [
    {"num_blocks": 2},
    {"connector": "mapl", "image_size": 32, "connector_options": {"queries": 2, "depth": 1}},
    {"encoder": "frames:", "num_frames": 3, "temporal": "frames", "num_blocks": 2, "inject_layers": [2, 3]},
], ids=["epalm", "mapl", "video-frames"])
def test_the_dry_run_and_the_model_lay_out_alike(settings, tiny_lm_folder, tiny_vit_folder, tmp_path):
    """The model plans from the loaded models, the dry run from their configurations: the same facts."""
    config = {"lm": tiny_lm_folder("opt_proj"), **settings,
              "encoder": settings.get("encoder", "") + tiny_vit_folder}
    model = PerceptualLM(AdapterConfig(**config))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": config, "out": str(tmp_path / "run")}))
    report = dry_run(recipe).format()
    layout = model.layout
    with torch.device("meta"):
        meta_lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config["lm"]))
    assert lm_facts(meta_lm) == lm_facts(model.lm)
    assert plan(model.config, encoder_facts(model.encoder), lm_facts(meta_lm)) == layout
    if layout.layers:
        assert f"({', '.join(map(str, layout.layers))}) receive the tokens of {len(layout.blocks)}" in report
    else:
        assert f"the tokens of encoder block {layout.blocks[0]} fill the slot columns" in report
    trainable, total = model.parameter_counts()
    assert f"trainable: {trainable:,} of {total:,} parameters" in report, report
    assert f"; {model.slot_count} slot column(s)" in report
