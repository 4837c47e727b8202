"""eP-ALM model: slot injection, cached generation == full recomputation, training, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    BloomConfig,
    T5Config,
    T5ForConditionalGeneration,
)

from sensorium import AdapterConfig, PerceptualLM, load
from sensorium.layout import paper_layer_range, paper_layer_tokens, sensorium_layer_range, spread_blocks
from sensorium.lm import load_lm
from sensorium.model import generate_mixed
from sensorium.recipe import TrainingOptions
from sensorium.testing import make_tokenizer
from sensorium.train import build_optimizer

ARCHS = ["llama", "opt", "opt_proj", "gpt2", "qwen2", "gpt_neox", "phi", "gemma3"]
TRAINABLE = {"prompt", "slot_embedding", "connector.linear.weight", "connector.linear.bias"}
QUESTIONS = ["what is the shape ?", "is there a red circle in the image ?", "color ?"]


def build(arch, tiny_lm_folder, tiny_vit_folder, frames: int | None = None, **overrides) -> PerceptualLM:
    """A tiny model; with ``frames``, a frame-wise video encoder whose frames each own a slot column."""
    if frames:
        overrides.update(encoder=f"frames:{tiny_vit_folder}", num_frames=frames, temporal="frames")
    config = AdapterConfig(lm=tiny_lm_folder(arch), **{"encoder": tiny_vit_folder, **overrides}, num_blocks=3,
                           inject_layers=[1, 2, 3])
    torch.manual_seed(1)
    model = PerceptualLM(config)
    with torch.no_grad():  # a strong random connector, so the image visibly steers the answers
        model.connector.linear.weight.normal_(0, 2.0)
        if frames:
            model.connector.frame_position.normal_(0, 2.0)
    return model.eval()


def features(model: PerceptualLM, batch: int, seed: int = 0) -> torch.Tensor:
    """Random encoder features of the model's shape: [batch, blocks, (frames,) dim]."""
    generator = torch.Generator().manual_seed(seed)
    frames = [] if model.encoder.num_tokens is None else [model.encoder.num_tokens]
    return torch.randn(batch, model.encoder.num_blocks, *frames, model.encoder.dim, generator=generator)


def test_layer_range_follows_the_paper():
    assert paper_layer_range(32) == list(range(19, 31))  # start_layer_idx: 19, end_layer_idx: 31
    assert sensorium_layer_range(32) == list(range(18, 30))
    assert paper_layer_tokens(6, 12) == spread_blocks(6, 12)
    assert paper_layer_tokens(5, 12) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    assert paper_layer_tokens(3, 2) == [0, 1]
    assert spread_blocks(6, 12) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert spread_blocks(3, 4) == [0, 0, 1, 2]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("frames", [None, 3], ids=["slot1", "slot3"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cached_generation_equals_full_recomputation(arch, num_beams, frames, cache, tiny_lm_folder, tiny_vit_folder):
    """The KV cache, grown step by step (dynamic) or allocated once at its full length (static), gives exactly the
    answers of full recomputation."""
    model = build(arch, tiny_lm_folder, tiny_vit_folder, frames)
    feats = features(model, len(QUESTIONS))
    options = {"max_new_tokens": 8, "min_new_tokens": 4, "num_beams": num_beams}  # EOS held back: never vacuous
    if cache == "static":
        options["cache_implementation"] = "static"
    cached = model.generate(feats, QUESTIONS, **options)
    recomputed = model.generate_uncached(feats, QUESTIONS, **options)
    assert cached == recomputed
    assert any(cached), "generation produced nothing to compare"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("frames", [None, 3], ids=["slot1", "slot3"])
def test_batched_answers_equal_single_answers(arch, frames, tiny_lm_folder, tiny_vit_folder):
    """Left padding must not change any sample's answer.

    Gemma3's tiny config slides an 8-column attention window, which counts columns, padding included: the
    shortest question sees its slot when alone, but padding between slot and text would push the slot beyond
    the window (padding goes first for that reason).
    """
    model = build(arch, tiny_lm_folder, tiny_vit_folder, frames)
    feats = features(model, len(QUESTIONS))
    if arch == "gemma3":
        lengths = [len(ids) for ids in model.prompt_ids(QUESTIONS)]
        assert min(lengths) < model.lm.config.sliding_window < max(lengths)
    batched = model.generate(feats, QUESTIONS, max_new_tokens=6)
    single = [model.generate(feats[i:i + 1], [q], max_new_tokens=6)[0] for i, q in enumerate(QUESTIONS)]
    assert batched == single


def test_uncached_generation_really_recomputes(tiny_lm_folder, tiny_vit_folder):
    """The reference must see the whole sequence at every step, or the equivalence proves nothing."""
    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    lengths = []
    hook = model.lm.model.layers[0].register_forward_pre_hook(
        lambda m, a, k: lengths.append((a[0] if a else k["hidden_states"]).shape[1]), with_kwargs=True)
    model.generate_uncached(features(model, 1), QUESTIONS[:1], max_new_tokens=3, min_new_tokens=3)
    cached_lengths = list(lengths)
    lengths.clear()
    model.generate(features(model, 1), QUESTIONS[:1], max_new_tokens=3, min_new_tokens=3)
    hook.remove()
    start = cached_lengths[0]
    assert cached_lengths == [start, start + 1, start + 2]
    assert lengths == [start, 1, 1]


def test_the_image_reaches_the_answer(tiny_lm_folder, tiny_vit_folder):
    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    questions = QUESTIONS[:1] * 8
    answers = model.generate(features(model, 8, seed=3), questions, max_new_tokens=6)
    assert len(set(answers)) > 1, "different images gave identical answers: injection had no effect"


@pytest.mark.parametrize("frames", [None, 3], ids=["slot1", "slot3"])
def test_slot_holds_the_injected_tokens_inside_each_layer(frames, tiny_lm_folder, tiny_vit_folder):
    model = build("llama", tiny_lm_folder, tiny_vit_folder, frames)
    feats = features(model, 2)
    seen = {}
    layers = model.lm.model.layers
    hooks = [layers[i].register_forward_pre_hook(
        lambda m, a, k, i=i: seen.__setitem__(i, (a[0] if a else k["hidden_states"]).detach()), with_kwargs=True)
        for i in (1, 2, 3)]
    model(feats, QUESTIONS[:2], ["circle", "red"])
    for hook in hooks:
        hook.remove()
    # The injector puts its hooks before any other while injecting, so these see the overwritten state.
    expected = model.map_features(feats).detach()
    expected = expected[:, :, None] if frames is None else expected  # [batch, layers, columns, width]
    _, mask = model._token_ids([p + a for p, a in zip(model.prompt_ids(QUESTIONS[:2]),
                                                       model.target_ids(["circle", "red"]), strict=True)])
    slots = model.slot_columns(mask).tolist()
    assert slots[0] != slots[1], "the two questions should pad differently"
    for position, layer in enumerate((1, 2, 3)):
        for row, slot in enumerate(slots):
            torch.testing.assert_close(seen[layer][row, slot:slot + (frames or 1)], expected[row, position])
    # Before the first injection layer every slot column holds the learned slot embedding.
    assert model.prefix_length == model.slot_index + (frames or 1)


def test_prefill_split_inside_the_slot_equals_one_prefill(tiny_lm_folder, tiny_vit_folder):
    """Chunked prefill: a chunk boundary between slot columns still injects every column once."""
    model = build("llama", tiny_lm_folder, tiny_vit_folder, frames=3)
    embeds, mask = model._embed(model.prompt_ids(QUESTIONS[:2]))
    positions = model.positions(mask)
    slots = model.slot_columns(mask)
    split = int(slots.max()) + 1  # inside the slot of the row padded most, before the other row's text
    with torch.no_grad(), model.injector.injecting(model.map_features(features(model, 2)), slots):
        whole = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]
        head = model.lm(inputs_embeds=embeds[:, :split], attention_mask=mask[:, :split],
                        position_ids=positions[:, :split], use_cache=True)
        tail = model.lm(inputs_embeds=embeds[:, split:], attention_mask=mask, position_ids=positions[:, split:],
                        cache=head.cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(tail, whole)


def test_only_the_connector_prompt_and_frame_positions_train(tiny_lm_folder, tiny_vit_folder):
    model = build("gpt2", tiny_lm_folder, tiny_vit_folder, frames=3).train()
    loss = model(features(model, 3), QUESTIONS, ["circle", "yes", "red"])
    loss.backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained == TRAINABLE | {"connector.frame_position"}
    assert not model.lm.training and not model.encoder.training
    assert all(not p.requires_grad for p in model.lm.parameters())
    assert all(not p.requires_grad for p in model.encoder.parameters())


def test_loss_only_counts_answer_tokens(tiny_lm_folder, tiny_vit_folder):
    """Changing the question changes the loss; the loss equals the CE of the answer tokens alone."""
    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    feats = features(model, 1)
    loss = model(feats, ["what is the shape ?"], ["circle"])
    prompt, target = model.prompt_ids(["what is the shape ?"])[0], model.target_ids(["circle"])[0]
    embeds, mask = model._embed([prompt + target])
    with model.injector.injecting(model.map_features(feats), model.slot_columns(mask)):
        logits = model.lm(inputs_embeds=embeds, attention_mask=mask).logits[0]
    start = embeds.shape[1] - len(target)
    reference = torch.nn.functional.cross_entropy(logits[start - 1:-1], torch.tensor(target))
    torch.testing.assert_close(loss, reference)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_steps_and_save_load_round_trip(arch, tiny_lm_folder, tiny_vit_folder, tmp_path):
    """Only the connector, prompt and slot learn; a few steps lower the loss; the adapter round-trips."""
    model = build(arch, tiny_lm_folder, tiny_vit_folder, prompt_length=2).train()
    assert not model.lm.training and not model.encoder.training
    feats, targets = features(model, 3), ["circle", "yes", "red"]
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = build_optimizer(model, TrainingOptions(lr=1e-2, prompt_lr=1e-2, weight_decay=0.0))
    losses = []
    for _ in range(6):
        loss = model(feats, QUESTIONS, targets)
        assert torch.isfinite(loss)
        loss.backward()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
        assert with_grad == TRAINABLE
        assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), f"frozen parameter {name} changed"

    model.eval()
    before = model.generate(feats, QUESTIONS, max_new_tokens=6, min_new_tokens=3)
    model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter.safetensors", "adapter_config.json"]
    restored = load(tmp_path / "adapter")
    assert restored.generate(feats, QUESTIONS, max_new_tokens=6, min_new_tokens=3) == before


@pytest.mark.parametrize("arch", ARCHS)
def test_learned_prefix_lives_where_token_embeddings_do(arch, tiny_lm_folder, tiny_vit_folder):
    """A prefix vector equal to a word's embedding must act exactly as that word does.

    Gemma multiplies embeddings by sqrt(hidden) inside its embedding layer: a prefix stored before
    that scaling, or scaled twice, would fail this comparison.
    """
    model = build(arch, tiny_lm_folder, tiny_vit_folder, prompt_length=2)
    embedding = model.lm.get_input_embeddings()
    words = model.tokenizer([" circle red blue green"], add_special_tokens=False).input_ids[0][:3]
    with torch.no_grad():
        vectors = embedding(torch.tensor(words)).float()
        model.prompt.copy_(vectors[:2])
        model.slot_embedding.copy_(vectors[2])
    ids, mask = model._token_ids(model.prompt_ids(QUESTIONS[:1]))
    embeds, _ = model._embed(model.prompt_ids(QUESTIONS[:1]))
    start = len(model.bos)
    ids[0, start:model.slot_index + 1] = torch.tensor(words)
    positions = model.positions(mask)
    with torch.no_grad():
        from_prefix = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        from_words = model.lm(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(from_prefix, from_words)


def save_unsupported(kind: str, folder) -> None:
    """A tiny random model of an architecture slot injection cannot drive, saved like a real one."""
    tokenizer = make_tokenizer(with_bos=False)
    vocab = len(tokenizer)
    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                                                    num_heads=4))
    elif kind == "bart":
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64))
    else:  # BLOOM: a decoder whose ALiBi attention takes no position_ids
        model = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("kind, reason", [
    ("t5", "is an encoder-decoder model"),
    ("bart", "is an encoder-decoder model"),
    ("bloom", "does not accept position_ids"),
])
def test_unsupported_language_models_fail_at_load(kind, reason, tiny_vit_folder, tmp_path, monkeypatch):
    folder = tmp_path / kind
    save_unsupported(kind, folder)
    if kind != "bloom":  # refused from the configuration alone, before any weight is read
        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                            lambda *a, **k: pytest.fail("weights loaded for an unsupported model"))
    with pytest.raises(ValueError) as caught:
        PerceptualLM(AdapterConfig(lm=str(folder), encoder=tiny_vit_folder, num_blocks=2, inject_layers=[0, 1]))
    message = str(caught.value)
    assert f"language model '{folder}'" in message and reason in message


def test_a_decoder_without_a_layer_list_fails_at_load(tiny_lm_folder, tiny_vit_folder):
    lm, tokenizer = load_lm(tiny_lm_folder("llama"))
    lm.model.layers = nn.Sequential(*lm.model.layers)  # same blocks, but no nn.ModuleList to hook
    with pytest.raises(ValueError, match=r"language model 'custom-llama' is not supported: .*decoder layers"):
        PerceptualLM(AdapterConfig(lm="custom-llama", encoder=tiny_vit_folder, num_blocks=2), lm=lm,
                     tokenizer=tokenizer)


def test_bad_block_or_layer_choice_is_reported(tiny_lm_folder, tiny_vit_folder):
    with pytest.raises(ValueError, match="encoder blocks"):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, encoder_blocks=[0, 9]))
    with pytest.raises(ValueError, match="injection layers"):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=2,
                                  inject_layers=[2, 4]))
    with pytest.raises(ValueError, match="has only 4 blocks"):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=6))


def test_mixed_adapters_in_one_batch_answer_as_each_alone(tiny_lm_folder, tiny_vit_folder):
    first = build("llama", tiny_lm_folder, tiny_vit_folder)
    torch.manual_seed(7)
    second = PerceptualLM(first.config, lm=first.lm, tokenizer=first.tokenizer, encoder=first.encoder).eval()
    with torch.no_grad():
        second.connector.linear.weight.normal_(0, 2.0)
        second.prompt.normal_(0, 1.0)
    feats = features(first, len(QUESTIONS))
    owners = [first, second, first]
    mixed = generate_mixed([(m, f, q) for m, f, q in zip(owners, feats, QUESTIONS, strict=True)], max_new_tokens=6)
    alone = [m.generate(f[None], [q], max_new_tokens=6)[0] for m, f, q in zip(owners, feats, QUESTIONS, strict=True)]
    assert mixed == alone
    assert second.generate(feats[:1], QUESTIONS[:1], max_new_tokens=6) != first.generate(
        feats[:1], QUESTIONS[:1], max_new_tokens=6), "the two adapters should disagree somewhere"


def test_task_decides_template_decoding_and_verbs(tiny_lm_folder, tiny_vit_folder):
    captioner = build("llama", tiny_lm_folder, tiny_vit_folder, task="caption")
    assert captioner.config.template == "A picture of"
    assert captioner.generation_options([""])["num_beams"] == 3
    assert captioner.generation_options([""], num_beams=1)["num_beams"] == 1
    with pytest.raises(ValueError, match="trained for caption"):
        captioner.ask([], ["what ?"])
    with pytest.raises(ValueError, match="unknown task"):
        AdapterConfig(task="translate")


ORDERS = [["prompt", "bos", "slot"], ["slot", "bos", "prompt"]]


def prefix_columns(model: PerceptualLM) -> dict[str, list[int]]:
    """Each part's columns in a row's prefix, counted here from ``column_order`` and the parts' widths."""
    widths = {"bos": len(model.bos), "prompt": model.config.prompt_length, "slot": model.slot_count}
    columns, start = {}, 0
    for part in model.config.column_order:
        columns[part] = list(range(start, start + widths[part]))
        start += widths[part]
    return columns


@pytest.mark.parametrize("order", ORDERS, ids=["prompt-bos-slot", "slot-bos-prompt"])
@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_column_order_puts_each_part_in_its_columns(order, arch, tiny_lm_folder, tiny_vit_folder):
    """BOS, the soft prompt and the slot lie where column_order says, the injected tokens reach the slot, and
    cached decoding still equals recomputation."""
    model = build(arch, tiny_lm_folder, tiny_vit_folder, frames=3, prompt_length=2, column_order=order)
    assert bool(model.bos) == (arch == "opt"), "OPT's tokenizer adds BOS, the tiny Llama's does not"
    ids, mask = model._token_ids(model.prompt_ids(QUESTIONS))
    embeds = model._with_learned_prefix(model.lm.get_input_embeddings()(ids), model._leading_pads(mask))
    columns = prefix_columns(model)
    for row, pads in enumerate(model._leading_pads(mask).tolist()):
        assert [ids[row, pads + c].item() for c in columns["bos"]] == model.bos
        torch.testing.assert_close(embeds[row, [pads + c for c in columns["prompt"]]], model.prompt)
        torch.testing.assert_close(embeds[row, [pads + c for c in columns["slot"]]],
                                   model.slot_embedding.expand(3, -1))
        assert model.slot_columns(mask)[row].item() == pads + columns["slot"][0]
    feats = features(model, len(QUESTIONS))
    options = {"max_new_tokens": 6, "min_new_tokens": 3, "num_beams": 3}
    assert model.generate(feats, QUESTIONS, **options) == model.generate_uncached(feats, QUESTIONS, **options)


def test_column_order_changes_the_function(tiny_lm_folder, tiny_vit_folder):
    """The same weights in another order compute another loss: the option is not a label."""
    ours = build("opt", tiny_lm_folder, tiny_vit_folder)
    feats = features(ours, 2)
    losses = [ours(feats, QUESTIONS[:2], ["circle", "red"]).item()]
    for order in ORDERS:
        other = build("opt", tiny_lm_folder, tiny_vit_folder, column_order=order)
        other.load_state_dict(ours.state_dict())
        losses.append(other(feats, QUESTIONS[:2], ["circle", "red"]).item())
    assert len({round(loss, 5) for loss in losses}) == 3


def test_column_order_is_checked(tiny_lm_folder, tiny_vit_folder):
    with pytest.raises(ValueError, match="must name each of bos, prompt, slot once"):
        AdapterConfig(column_order=["bos", "slot"])
    with pytest.raises(ValueError, match="column_order applies to layout 'sensorium'"):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, layout="paper",
                                  column_order=["prompt", "bos", "slot"]))
