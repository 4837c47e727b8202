"""Compiled decoding in shape buckets: one compile per bucket whatever the requests, answers those of eager decoding."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from test_model import build, features

from sensorium.config import AdapterConfig
from sensorium.decoding import MIN_CACHE_LENGTH, CompiledDecoding, batch_bucket, cache_bucket, padded_rows
from sensorium.model import PerceptualLM, build_model, generate_mixed

QUESTIONS = ["shape ?", "what is the shape in the middle of the image ?", "is there a red circle ?",
             "color of the big shape on the left of the small one ?"]
# (batch, first question, new tokens) of each request: batches 1 to 4 in buckets 1, 2 and 4, prompts of several
# lengths and answers of several lengths, all within one cache bucket of the tiny LM.
REQUESTS = [(1, 0, 4), (2, 1, 6), (3, 2, 5), (4, 3, 8), (3, 0, 3), (2, 2, 7), (1, 3, 6)]
EAGER_BACKEND = CompiledDecoding(backend="eager")  # traces and counts graphs as inductor would, without codegen


def test_batches_round_up_to_powers_of_two():
    assert [batch_bucket(rows) for rows in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 16]


def test_caches_round_up_to_powers_of_two_within_the_context():
    assert cache_bucket(1) == cache_bucket(MIN_CACHE_LENGTH) == MIN_CACHE_LENGTH
    assert cache_bucket(MIN_CACHE_LENGTH + 1) == 2 * MIN_CACHE_LENGTH
    assert cache_bucket(300) == 512
    assert cache_bucket(300, context=400) == 400
    assert cache_bucket(40, context=32) == 40  # never shorter than what it must hold


def test_padding_repeats_the_last_row():
    rows = torch.arange(6).reshape(3, 2)
    assert padded_rows(rows, 4).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]]
    assert padded_rows(rows, 3) is rows


def questions_of(batch: int, first: int) -> list[str]:
    return [QUESTIONS[(first + row) % len(QUESTIONS)] for row in range(batch)]


def compiled_graphs(model, **compiling) -> tuple[int, list[list[str]]]:
    """Graphs compiled while ``model`` answers ``REQUESTS`` greedily with ``compiling`` options, and its answers."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    answers = [model.generate(features(model, batch, seed=batch), questions_of(batch, first), max_new_tokens=new,
                              min_new_tokens=new, num_beams=1, **compiling)
               for batch, first, new in REQUESTS]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return graphs, answers


def eager_answers(model) -> list[list[str]]:
    return [model.generate(features(model, batch, seed=batch), questions_of(batch, first), max_new_tokens=new,
                           min_new_tokens=new, num_beams=1)
            for batch, first, new in REQUESTS]


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method. is deprecated:DeprecationWarning")  # torch's own
@pytest.mark.parametrize("layout", ["sensorium", "paper"])
def test_compiled_decoding_compiles_once_per_bucket_and_answers_as_eager(layout, tiny_lm_folder, tiny_vit_folder):
    settings = {"visual_row": "causal"} if layout == "paper" else {}
    config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=3, inject_layers=[1, 2],
                           layout=layout, **settings)
    torch.manual_seed(1)
    model = build_model(config).eval()
    graphs, answers = compiled_graphs(model, compiled=EAGER_BACKEND)
    buckets = {batch_bucket(batch) for batch, _, _ in REQUESTS}
    assert 1 <= graphs <= len(buckets)
    assert answers == eager_answers(model)


def test_without_buckets_the_same_requests_compile_more(tiny_lm_folder, tiny_vit_folder):
    """transformers' compiled generation alone sizes the batch and the cache to each request: a compile each time
    either grows. (A fresh LM: transformers keeps the largest static cache an LM has had, which would hide the
    cache lengths.)"""
    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    graphs, _ = compiled_graphs(model, cache_implementation="static", compile_config=EAGER_BACKEND.compile_config())
    assert graphs > len({batch_bucket(batch) for batch, _, _ in REQUESTS})


def test_mixed_adapters_decode_compiled_as_eager(tiny_lm_folder, tiny_vit_folder):
    """Adapters sharing one LM, batched together by the server, padded to a bucket as one batch."""
    first = build("llama", tiny_lm_folder, tiny_vit_folder)
    torch.manual_seed(2)
    second = PerceptualLM(first.config, lm=first.lm, tokenizer=first.tokenizer, encoder=first.encoder).eval()
    with torch.no_grad():
        second.connector.linear.weight.normal_(0, 2.0)
    feats = features(first, 3)
    samples = [(first, feats[0], QUESTIONS[0]), (second, feats[1], QUESTIONS[1]), (second, feats[2], QUESTIONS[2])]
    options = {"max_new_tokens": 5, "min_new_tokens": 5}
    torch._dynamo.reset()
    assert generate_mixed(samples, compiled=EAGER_BACKEND, **options) == generate_mixed(samples, **options)
    torch._dynamo.reset()


def test_beam_search_decodes_eagerly(tiny_lm_folder, tiny_vit_folder):
    """transformers compiles no beam search step: ``compiled`` leaves it as it is, with the dynamic cache."""
    model = build("llama", tiny_lm_folder, tiny_vit_folder)
    options = {"max_new_tokens": 5, "min_new_tokens": 5, "num_beams": 3}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    feats = features(model, 3)
    assert model.generate(feats, QUESTIONS[:3], compiled=EAGER_BACKEND, **options) == model.generate(
        feats, QUESTIONS[:3], **options)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
