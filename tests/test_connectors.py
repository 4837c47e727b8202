"""Connectors beside eP-ALM: shapes and layout, what trains, cached generation, save/load, patch features."""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from sensorium import AdapterConfig, PerceptualLM, load
from sensorium.cache import FeatureCache
from sensorium.dryrun import dry_run
from sensorium.encoders import load_encoder
from sensorium.model import generate_mixed

QUESTIONS = ["what is the shape ?", "is there a red circle in the image ?", "color ?"]
TARGETS = ["circle", "yes", "red"]
SMALL_MAPL = {"queries": 3, "depth": 2, "width": 16, "heads": 2}
INJECTING = {"num_blocks": 3, "inject_layers": [1, 2, 3]}
# name -> (adapter settings, the output projection made strong so that the image visibly steers the words)
VARIANTS = {
    "epalm": ({"connector": "epalm", **INJECTING}, "linear"),
    "epalm-per-layer": ({"connector": "epalm", "shared_linear": False, **INJECTING}, "linears"),
    "epalm-patches": ({"connector": "epalm-patches", **INJECTING}, "linear"),
    "epalm-patches-attention": ({"connector": "epalm-patches", "connector_options": {"pool": "attention"},
                                 **INJECTING}, "linear"),
    "limber-1": ({"connector": "limber-1"}, "linear"),
    "limber-all": ({"connector": "limber-all"}, "map"),
    "limber-all-mlp": ({"connector": "limber-all", "connector_options": {"mlp": True}}, "map.2"),
    "mapl": ({"connector": "mapl", "connector_options": SMALL_MAPL}, "project_out"),
}
ARCHS = ["llama", "opt", "opt_proj", "gpt2", "qwen2", "gpt_neox", "phi", "gemma3"]
# The tiny ViT: 32 px images in 8 px patches -> a 4 x 4 grid; 4 blocks of width 32.
PATCHES = 16


def build(variant: str, tiny_lm_folder, tiny_vit_folder, arch: str = "llama", **overrides) -> PerceptualLM:
    settings, projection = VARIANTS[variant]
    config = AdapterConfig(lm=tiny_lm_folder(arch), encoder=tiny_vit_folder, **{**settings, **overrides})
    torch.manual_seed(1)
    model = PerceptualLM(config)
    with torch.no_grad():
        for name, parameter in model.connector.named_parameters():
            if name.startswith(projection) and name.endswith("weight"):
                parameter.normal_(0, 2.0)
    return model.eval()


def features(model: PerceptualLM, batch: int, seed: int = 0) -> torch.Tensor:
    """Random features shaped as the model's encode() gives them."""
    generator = torch.Generator().manual_seed(seed)
    encoder = model.encoder
    if model.layout.stored_blocks is None:
        return torch.randn(batch, encoder.num_blocks, encoder.dim, generator=generator)
    tokens = torch.randn(batch, len(model.layout.stored_blocks), 1 + PATCHES, encoder.dim, generator=generator)
    return tokens.to(torch.bfloat16)


def images(count: int) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(0)
    return [Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8).numpy())
            for _ in range(count)]


# name -> (slot columns, shape of map_features per sample, where the tokens go)
EXPECTED = {
    "epalm": (1, (3, 32), "layers"),
    "epalm-per-layer": (1, (3, 32), "layers"),
    "epalm-patches": (4, (3, 4, 32), "layers"),
    "epalm-patches-attention": (4, (3, 4, 32), "layers"),
    "limber-1": (1, (1, 16), "input"),
    "limber-all": (PATCHES, (PATCHES, 16), "input"),
    "limber-all-mlp": (PATCHES, (PATCHES, 16), "input"),
    "mapl": (3, (3, 16), "input"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_layout_and_shapes(variant, tiny_lm_folder, tiny_vit_folder):
    """OPT-350m's shape (16-d embeddings, 32-d layers): input tokens are embedding-wide, injected ones layer-wide."""
    model = build(variant, tiny_lm_folder, tiny_vit_folder, arch="opt_proj")
    columns, mapped, placement = EXPECTED[variant]
    assert (model.layout.placement, model.slot_count) == (placement, columns)
    assert model.prefix_length == len(model.bos) + model.config.prompt_length + columns
    encoded = model.encode(images(2))
    reads_patches = model.connector.tokens == "patches"
    if reads_patches:  # only the blocks read, [CLS] + patches, in bfloat16
        assert encoded.shape == (2, len(model.layout.blocks), 1 + PATCHES, 32) and encoded.dtype == torch.bfloat16
    else:  # every block's [CLS], float32, as eP-ALM's cache always held
        assert encoded.shape == (2, 4, 32) and encoded.dtype == torch.float32
    assert model.map_features(encoded).shape == (2, *mapped)
    assert model.layout.blocks == ((1, 2, 3) if placement == "layers" else (3,))
    assert (model.injector is None) == (placement == "input")
    assert (model.slot_embedding is None) == (placement == "input")


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_connector_and_prompt_train(variant, tiny_lm_folder, tiny_vit_folder):
    model = build(variant, tiny_lm_folder, tiny_vit_folder, prompt_length=2).train()
    loss = model(features(model, 3), QUESTIONS, TARGETS)
    loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    learned = {"prompt"} | ({"slot_embedding"} if model.layout.placement == "layers" else set())
    assert trainable == learned | {name for name in trainable if name.startswith("connector.")}
    assert {name for name, p in model.named_parameters() if p.grad is not None} == trainable
    assert all(p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    assert all(not p.requires_grad for p in [*model.lm.parameters(), *model.encoder.parameters()])
    assert not model.lm.training and not model.encoder.training


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_generation_equals_full_recomputation(variant, arch, tiny_lm_folder, tiny_vit_folder):
    model = build(variant, tiny_lm_folder, tiny_vit_folder, arch=arch)
    feats = features(model, len(QUESTIONS))
    for beams in (1, 3):
        options = {"max_new_tokens": 6, "min_new_tokens": 3, "num_beams": beams}  # EOS held back: never vacuous
        cached = model.generate(feats, QUESTIONS, **options)
        assert cached == model.generate_uncached(feats, QUESTIONS, **options)
        assert any(cached), "generation produced nothing to compare"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_image_reaches_the_answer_and_padding_does_not(variant, tiny_lm_folder, tiny_vit_folder):
    model = build(variant, tiny_lm_folder, tiny_vit_folder)
    answers = model.generate(features(model, 6, seed=3), QUESTIONS[:1] * 6, max_new_tokens=6)
    assert len(set(answers)) > 1, "different images gave identical answers: the connector had no effect"
    feats = features(model, len(QUESTIONS))
    batched = model.generate(feats, QUESTIONS, max_new_tokens=6)
    assert batched == [model.generate(feats[i:i + 1], [q], max_new_tokens=6)[0] for i, q in enumerate(QUESTIONS)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip(variant, tiny_lm_folder, tiny_vit_folder, tmp_path):
    model = build(variant, tiny_lm_folder, tiny_vit_folder)
    with torch.no_grad():  # every trainable tensor away from its initial value, so a missed one would show
        for parameter in model.trainable_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    feats = features(model, len(QUESTIONS))
    before = model.generate(feats, QUESTIONS, max_new_tokens=6, min_new_tokens=3)
    model.save_pretrained(tmp_path / "adapter")
    restored = load(tmp_path / "adapter")
    assert restored.config == model.config
    state, restored_state = model.adapter_state(), restored.adapter_state()
    assert state.keys() == restored_state.keys()
    assert all(torch.equal(state[name], restored_state[name]) for name in state)
    assert restored.generate(feats, QUESTIONS, max_new_tokens=6, min_new_tokens=3) == before


def test_per_layer_linears_map_each_layer_on_its_own(tiny_lm_folder, tiny_vit_folder):
    model = build("epalm-per-layer", tiny_lm_folder, tiny_vit_folder)
    assert len(model.connector.linears) == 3 and not hasattr(model.connector, "linear")
    feats = features(model, 2)
    mapped = model.map_features(feats)
    chosen = nn.functional.layer_norm(feats[:, model.layout.blocks], (32,))
    for layer, (block, linear) in enumerate(zip(model.layout.layer_tokens, model.connector.linears, strict=True)):
        torch.testing.assert_close(mapped[:, layer], linear(chosen[:, block]))


def test_mean_pooling_averages_the_four_quadrants(tiny_lm_folder, tiny_vit_folder):
    model = build("epalm-patches", tiny_lm_folder, tiny_vit_folder)
    patches = torch.randn(2, 3, PATCHES, 32)
    pooled = model.connector._mean_pool(patches)
    grid = patches.view(2, 3, 4, 4, 32)  # rows x columns of the 4 x 4 patch grid
    quadrants = [grid[:, :, :2, :2], grid[:, :, :2, 2:], grid[:, :, 2:, :2], grid[:, :, 2:, 2:]]
    expected = torch.stack([q.mean(dim=(2, 3)) for q in quadrants], dim=2)
    torch.testing.assert_close(pooled, expected)


def test_attention_pooling_weighs_patches_and_ignores_the_summary_token(tiny_lm_folder, tiny_vit_folder):
    model = build("epalm-patches-attention", tiny_lm_folder, tiny_vit_folder)
    feats = features(model, 2).float()
    pooled = model.connector._attention_pool(feats[:, :, 1:])
    assert pooled.shape == (2, 3, 4, 32)
    # Convex combinations of the patches: inside their range, feature by feature.
    assert (pooled <= feats[:, :, 1:].amax(dim=2, keepdim=True) + 1e-5).all()
    changed = feats.clone()
    changed[:, :, 0] = 100.0  # the summary token
    torch.testing.assert_close(model.map_features(changed), model.map_features(feats))


def test_patch_tokens_from_the_encoder(tiny_vit_folder):
    summary = load_encoder(tiny_vit_folder)
    patches = load_encoder(tiny_vit_folder, tokens="patches")
    assert (summary.tokens, summary.patch_grid, patches.tokens, patches.patch_grid) == ("cls", None, "patches", (4, 4))
    pixels = patches.preprocess(images(2))
    with torch.inference_mode():
        tokens = patches(pixels)
        hidden = patches.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        cls = summary(pixels)
    assert tokens.shape == (2, 4, 1 + PATCHES, 32)
    torch.testing.assert_close(tokens[:, :, 0], cls)  # the summary token is eP-ALM's [CLS], unchanged
    torch.testing.assert_close(tokens[:, 2, 1:], hidden[3][:, 1:])  # block 2's output, after the embeddings
    assert summary.fingerprint() + ":tokens=patches" == patches.fingerprint()


def test_the_cache_keeps_only_the_blocks_read(tiny_vit_folder, tmp_path):
    paths = []
    for index, image in enumerate(images(3)):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    summary = FeatureCache(load_encoder(tiny_vit_folder), root=tmp_path / "cache")
    # [CLS] features keep the folder they always had: caches filled before patch tokens existed stay valid.
    assert summary.folder.name == hashlib.sha1(summary.encoder.fingerprint().encode()).hexdigest()[:16]
    encoder = load_encoder(tiny_vit_folder, tokens="patches")
    two = FeatureCache(encoder, root=tmp_path / "cache", blocks=[2, 3])
    last = FeatureCache(encoder, root=tmp_path / "cache", blocks=[3])
    assert len({summary.folder, two.folder, last.folder}) == 3
    stored, rows, _ = two.features(paths)
    assert stored.shape == (3, 2, 1 + PATCHES, 32) and stored.dtype == torch.bfloat16
    with torch.inference_mode():
        direct = encoder(encoder.preprocess([Image.open(p) for p in paths]))
    torch.testing.assert_close(stored[rows[paths[1]]], direct[1, [2, 3]].to(torch.bfloat16))
    assert last.features(paths)[0].shape == (3, 1, 1 + PATCHES, 32)


def test_mixed_batches_of_input_adapters_answer_as_each_alone(tiny_lm_folder, tiny_vit_folder):
    first = build("limber-1", tiny_lm_folder, tiny_vit_folder)
    torch.manual_seed(7)
    second = PerceptualLM(first.config, lm=first.lm, tokenizer=first.tokenizer, encoder=first.encoder).eval()
    with torch.no_grad():
        second.connector.linear.weight.normal_(0, 2.0)
    feats = features(first, len(QUESTIONS))
    owners = [first, second, first]
    samples = list(zip(owners, feats, QUESTIONS, strict=True))
    alone = [m.generate(f[None], [q], max_new_tokens=6)[0] for m, f, q in samples]
    assert generate_mixed(samples, max_new_tokens=6) == alone
    injecting = build("epalm", tiny_lm_folder, tiny_vit_folder)
    injecting.lm = first.lm
    with pytest.raises(ValueError, match="placement"):
        generate_mixed([(first, feats[0], QUESTIONS[0]), (injecting, feats[0], QUESTIONS[0])])


@pytest.mark.parametrize("settings, message", [
    ({"connector": "limber-1", "inject_layers": [1, 2]}, "inject_layers applies to injecting connectors"),
    ({"connector": "limber-all", "encoder_blocks": [2, 3]}, "reads one encoder block"),
    ({"connector": "mapl", "connector_options": {"layers": 2}}, "has no option layers; its options: queries, depth"),
    ({"connector": "epalm-patches", "connector_options": {"tokens": 3}, **INJECTING}, "square number of tokens"),
    ({"connector": "epalm-patches", "connector_options": {"pool": "max"}, **INJECTING}, "unknown pool 'max'"),
    ({"connector": "limber-one"}, "unknown connector 'limber-one'"),
])
def test_bad_connector_settings_are_reported(settings, message, tiny_lm_folder, tiny_vit_folder):
    with pytest.raises(ValueError, match=message):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, **settings))


def test_patch_connectors_need_image_encoders_that_give_patches(tiny_lm_folder, tiny_vit_folder):
    with pytest.raises(ValueError, match="patch tokens come from image encoders only"):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=f"frames:{tiny_vit_folder}",
                                   connector="limber-all"))
    with pytest.raises(ValueError, match="reads patches tokens; encoder .* gives cls"):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, connector="mapl"),
                     encoder=load_encoder(tiny_vit_folder))
    with pytest.raises(ValueError, match="cannot keep frames apart"):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=f"frames:{tiny_vit_folder}", num_frames=2,
                                   temporal="frames", connector="limber-1"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_dry_run_counts_what_the_built_model_trains(variant, tiny_lm_folder, tiny_vit_folder, tmp_path):
    settings = {**VARIANTS[variant][0], "lm": tiny_lm_folder("llama"), "encoder": tiny_vit_folder, "image_size": 32}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": settings, "data": {"train": {"format": "easy-vqa", "split": "train"}},
                                      "training": {"batch_size": 4, "max_steps": 4}, "out": str(tmp_path / "run")}))
    report = dry_run(recipe).format()
    model = PerceptualLM(AdapterConfig(**settings))
    trainable, total = model.parameter_counts()
    assert f"trainable: {trainable:,} of {total:,} parameters" in report, report
    assert f"; {model.slot_count} slot column(s)" in report


@pytest.mark.parametrize("settings, message", [
    ({"connector": "limber-all", "encoder": "frames:dinov2-small"}, "reads patch tokens, which only image vision"),
    ({"connector": "mapl", "encoder": "efficientnet-lite0"}, "reads patch tokens, which only image vision"),
    ({"connector": "limber-1", "inject_layers": [1]}, "writes its tokens into the input: inject_layers"),
    ({"connector": "mapl", "connector_options": {"layers": 2}}, "'mapl' has no option layers"),
    ({"connector": "limber-1", "temporal": "frames", "encoder": "frames:dinov2-small"}, "needs the epalm connector"),
])
def test_dry_run_reports_bad_connector_settings(settings, message, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": settings, "out": str(tmp_path / "run")}))
    report = dry_run(recipe)
    assert report.exit_code == 2 and message in report.format(), report.format()
