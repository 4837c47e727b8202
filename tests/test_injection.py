"""Slot injection hooks exist only while a call injects: adapters over one LM cost nothing idle and can be dropped."""

from __future__ import annotations

import gc
import weakref

import pytest
from test_model import QUESTIONS, build, features
from torch import nn

from sensorium import PerceptualLM
from sensorium.injection import decoder_layers


def hooks_on(lm: nn.Module) -> int:
    """Forward hooks on the LM and on each of its decoder layers, where the injector puts its own."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in [lm, *decoder_layers(lm)])


def sibling(model: PerceptualLM) -> PerceptualLM:
    """Another adapter of the same layout over the same LM, tokenizer and encoder, as a server holds them."""
    return PerceptualLM(model.config, lm=model.lm, tokenizer=model.tokenizer, encoder=model.encoder).eval()


def test_hooks_exist_only_while_injecting(tiny_lm_folder, tiny_vit_folder):
    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    assert hooks_on(model.lm) == 0
    feats = features(model, 1)
    _, mask = model._token_ids(model.prompt_ids(QUESTIONS[:1]))
    with model.injector.injecting(model.map_features(feats), model.slot_columns(mask)):
        assert hooks_on(model.lm) == 2 + len(model.injector.layers)
    model.generate(feats, QUESTIONS[:1], max_new_tokens=3)
    model(feats, QUESTIONS[:1], ["circle"])
    assert hooks_on(model.lm) == 0


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_decode_steps_run_without_hooks_once_the_slot_is_cached(cache, tiny_lm_folder, tiny_vit_folder):
    """The prefill writes the slot into the KV cache; every later step runs the plain decoder (what torch.compile
    captures whole). Full recomputation sees the slot at every step and keeps its hooks."""
    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    seen = []
    counter = model.lm.register_forward_pre_hook(lambda module, args: seen.append(hooks_on(model.lm) - 1))
    model.generate(features(model, 2), QUESTIONS[:2], max_new_tokens=4, min_new_tokens=4,
                   cache_implementation=cache)
    assert seen == [2 + len(model.injector.layers), 0, 0, 0]
    seen.clear()
    model.generate_uncached(features(model, 2), QUESTIONS[:2], max_new_tokens=3, min_new_tokens=3)
    counter.remove()
    assert seen == [2 + len(model.injector.layers)] * 3


def test_an_error_inside_leaves_no_hooks(tiny_lm_folder, tiny_vit_folder):
    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    feats = features(model, 1)
    _, mask = model._token_ids(model.prompt_ids(QUESTIONS[:1]))
    with pytest.raises(KeyError), model.injector.injecting(model.map_features(feats), model.slot_columns(mask)):
        raise KeyError("interrupted")
    with pytest.raises(ValueError):  # refused by generate() itself, inside the injection
        model.generate(feats, QUESTIONS[:1], max_new_tokens=3, num_beams=2, num_return_sequences=3)
    assert hooks_on(model.lm) == 0
    assert model.generate(feats, QUESTIONS[:1], max_new_tokens=4) == model.generate_uncached(
        feats, QUESTIONS[:1], max_new_tokens=4)


def test_many_adapters_over_one_lm_leave_no_hooks_and_answer_as_alone(tiny_lm_folder, tiny_vit_folder):
    first = build("llama", tiny_lm_folder, tiny_vit_folder)
    feats = features(first, len(QUESTIONS))
    alone = first.generate(feats, QUESTIONS, max_new_tokens=6)
    others = [sibling(first) for _ in range(15)]
    assert hooks_on(first.lm) == 0
    assert first.generate(feats, QUESTIONS, max_new_tokens=6) == alone
    for model in others:
        model.generate(feats[:1], QUESTIONS[:1], max_new_tokens=2)
    assert hooks_on(first.lm) == 0


def test_a_dropped_adapter_is_collected_while_its_lm_lives(tiny_lm_folder, tiny_vit_folder):
    first = build("llama", tiny_lm_folder, tiny_vit_folder)
    dropped = sibling(first)
    dropped.generate(features(first, 1), QUESTIONS[:1], max_new_tokens=2)
    gone = [weakref.ref(dropped), weakref.ref(dropped.injector)]
    del dropped
    gc.collect()
    assert [ref() for ref in gone] == [None, None]
    assert first.lm is not None


def test_a_second_injection_into_one_lm_is_refused(tiny_lm_folder, tiny_vit_folder):
    """Two injections at once would both write the slot: nested (same or another adapter) is an error."""
    first = build("llama", tiny_lm_folder, tiny_vit_folder)
    second = sibling(first)
    feats = features(first, 1)
    _, mask = first._token_ids(first.prompt_ids(QUESTIONS[:1]))
    tokens, slots = first.map_features(feats), first.slot_columns(mask)
    with first.injector.injecting(tokens, slots):
        for model in (first, second):
            with pytest.raises(RuntimeError, match="already injecting"):
                model.generate(feats, QUESTIONS[:1], max_new_tokens=2)
        assert hooks_on(first.lm) == 2 + len(first.injector.layers)
    assert hooks_on(first.lm) == 0
    second.generate(feats, QUESTIONS[:1], max_new_tokens=2)  # free again once the first is done


def test_compiled_decode_steps_have_no_graph_break(tiny_lm_folder, tiny_vit_folder):
    """With the static KV cache, transformers compiles the decode step; hook-free steps trace as one graph (the
    eager backend traces as inductor would, without generating kernels) and answer as the uncompiled model."""
    import torch._dynamo
    from transformers import CompileConfig

    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    feats = features(model, 2)
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "cache_implementation": "static"}
    config = CompileConfig(backend="eager", fullgraph=True)
    config._compile_all_devices = True
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = model.generate(feats, QUESTIONS[:2], compile_config=config, **options)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    assert compiled == model.generate(feats, QUESTIONS[:2], disable_compile=True, **options)
    torch._dynamo.reset()
