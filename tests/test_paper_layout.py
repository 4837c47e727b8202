"""``layout: paper`` computes the official eP-ALM function (mshukor/eP-ALM, models/epalm.py and models/opt.py).

``official_logits`` below is that forward written out plainly over a tiny OPT's own modules, read from the official
code: the soft prompt concatenated before the token embeddings (projected with them, no position added), positions
from the text's own mask (``cumsum * mask - 1``, OPT's offset 2), a causal additive mask with padding columns closed,
and at the first injection layer the visual token concatenated in front with its mask row and column padded open; at
each later injection layer it is replaced, token ``(layer - start) // step`` with ``step = layers // tokens``. Its
training loss sums every text token's cross-entropy but the first, per sample.

The model under test runs the LM through transformers' own forward with hooks; the reference runs each decoder layer
by hand, with sdpa attention and its own additive mask. Both hold the same weights in float64, so that with sdpa
their logits differ only by float64 rounding (about 1e-13 here; in float32 the post-norm tiny OPT amplifies
rounding past 1e-4 on a few elements), far below the 1e-8 allowed. transformers' eager OPT attention takes its
softmax in float32 whatever the weights: about 1e-6 apart, hence 1e-5 there. Shifting the injection one layer
moves the logits by more than 1e-2 (``test_the_reference_catches_a_one_layer_shift``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from sensorium.config import AdapterConfig
from sensorium.lm import load_lm
from sensorium.model import PaperLM, build_model

# The two official configurations: configs/image/ePALM_vqa.yaml (a linear layer per encoder block, the soft prompt
# made by an MLP) and configs/image/ePALM_pt_L_vqa.yaml (one shared linear layer, a plain prompt).
OFFICIAL_CONFIGS = {
    "ePALM_vqa": dict(shared_linear=False, connector_options={"per_block": True}, prompt_mlp=True),
    "ePALM_pt_L_vqa": dict(shared_linear=True, prompt_mlp=False),
}
QUESTIONS = ["what is the shape", "is there a red circle in the image", "color"]
ANSWERS = ["circle", "yes", "a red one"]
# By the model's attention implementation (see the module docstring).
TOLERANCES = {"sdpa": dict(atol=1e-8, rtol=1e-8), "eager": dict(atol=1e-5, rtol=1e-5)}
TOLERANCE = TOLERANCES["sdpa"]


def paper_model(lm_folder: str, vit_folder: str, official: str, **settings) -> PaperLM:
    settings = {"num_blocks": 3, "inject_layers": [1, 2], "prompt_length": 3, **OFFICIAL_CONFIGS[official],
                **settings}
    config = AdapterConfig(lm=lm_folder, encoder=vit_folder, layout="paper", encoder_norm=True, token_norm=False,
                           loss="text", **settings)
    torch.manual_seed(1)
    model = build_model(config, *load_lm(lm_folder)).eval().double()
    with torch.no_grad():  # a visible visual token and prompt, so that a misplaced one changes the logits
        for parameter in model.trainable_parameters():
            parameter.normal_(0, 0.5)
    return model


def official_lm(model: PaperLM):
    """A copy of the model's LM, ``</a>``'s embedding row included, with sdpa attention."""
    lm = copy.deepcopy(model.lm)
    lm.set_attn_implementation("sdpa")
    return lm


def official_tokens(model: PaperLM, features: torch.Tensor) -> list[torch.Tensor]:
    """models/epalm.py: the [CLS] of each of the last N blocks after the ViT's final norm, through its connector."""
    norm = model.encoder.final_norm()
    blocks = F.layer_norm(features[:, -model.config.num_blocks:], norm.normalized_shape, norm.weight, norm.bias,
                          norm.eps)
    connector = model.connector
    linears = [connector.linear] * blocks.shape[1] if connector.shared else list(connector.linears)
    return [linear(blocks[:, j])[:, None] for j, linear in enumerate(linears)]


def official_prompt(model: PaperLM) -> torch.Tensor:
    """models/epalm.py InputPrompts: an embedding per prompt token, through Linear, Tanh, Linear when mlp."""
    return model.prompt if model.prompt_mlp is None else model.prompt_mlp(model.prompt)


def official_logits(lm, model: PaperLM, features: torch.Tensor, texts: list[list[int]]) -> torch.Tensor:
    """models/opt.py's decoder forward on ``lm``, texts padded on the right."""
    decoder = lm.model.decoder
    width, pad = max(map(len, texts)), model.tokenizer.pad_token_id
    ids = torch.tensor([t + [pad] * (width - len(t)) for t in texts])
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in texts])
    positions = (mask.cumsum(1) * mask - 1).long()
    prompt = official_prompt(model)[None].expand(len(texts), -1, -1)
    embeds = torch.cat([prompt, decoder.embed_tokens(ids)], dim=1)
    mask = F.pad(mask, (prompt.shape[1], 0), value=1)
    length, lowest = mask.shape[1], torch.finfo(embeds.dtype).min
    causal = torch.full((length, length), lowest, dtype=embeds.dtype).triu(1)
    additive = causal[None, None] + (1.0 - mask[:, None, None, :].to(embeds.dtype)) * lowest
    additive = additive.clamp(min=lowest)
    if decoder.project_in is not None:
        embeds = decoder.project_in(embeds)
    position_embeds = decoder.embed_positions.weight[positions + 2]
    hidden = torch.cat([embeds[:, :prompt.shape[1]], embeds[:, prompt.shape[1]:] + position_embeds], dim=1)
    tokens = official_tokens(model, features)
    start, end = model.layout.layers[0], model.layout.layers[-1] + 1
    step = (end - start) // len(tokens) if end - start > len(tokens) else 1
    for index, layer in enumerate(decoder.layers):
        if start <= index < end:
            token = tokens[min((index - start) // step, len(tokens) - 1)]
            if index == start:
                hidden = torch.cat([token, hidden], dim=1)
                additive = F.pad(additive, (1, 0, 1, 0), value=0.0)
            else:
                hidden = torch.cat([token, hidden[:, 1:]], dim=1)
        hidden = layer(hidden, attention_mask=additive)
    if decoder.final_layer_norm is not None:
        hidden = decoder.final_layer_norm(hidden)
    if decoder.project_out is not None:
        hidden = decoder.project_out(hidden)
    return lm.lm_head(hidden)


def official_loss(logits: torch.Tensor, texts: list[list[int]]) -> torch.Tensor:
    """accelerate_training/vqa.py: labels are the text's ids (padding ignored), shifted by one and padded on the left
    to the logits' length; the cross-entropy summed per sample, averaged over the batch."""
    width = max(map(len, texts))
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in texts])[:, 1:]
    labels = F.pad(labels, (logits.shape[1] - 1 - labels.shape[1], 0), value=-100)
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="none")
    return losses.view(len(texts), -1).sum(1).mean()


@pytest.fixture(scope="module")
def features() -> torch.Tensor:
    return torch.randn(len(QUESTIONS), 4, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def texts_of(model: PaperLM) -> list[list[int]]:
    prompts, answers = model.prompt_ids(QUESTIONS), model.target_ids(ANSWERS)
    return [p + a for p, a in zip(prompts, answers, strict=True)]


@pytest.mark.parametrize("attention", sorted(TOLERANCES))
@pytest.mark.parametrize("arch", ["opt", "opt_proj"])
@pytest.mark.parametrize("official", sorted(OFFICIAL_CONFIGS))
def test_paper_layout_computes_the_official_forward(arch, official, attention, tiny_lm_folder, tiny_vit_folder,
                                                    features):
    model = paper_model(tiny_lm_folder(arch), tiny_vit_folder, official)
    reference = official_lm(model)
    model.lm.set_attn_implementation(attention)
    texts = texts_of(model)
    assert len({len(t) for t in texts}) > 1  # the batch pads
    with torch.no_grad():
        ours = model.sequence_logits(features, texts)
        theirs = official_logits(reference, model, features, texts)
        torch.testing.assert_close(ours, theirs, **TOLERANCES[attention])
        # The training loss is taken over float32 logits whatever the LM holds: float32's relative precision.
        torch.testing.assert_close(model(features, QUESTIONS, ANSWERS).double(), official_loss(theirs, texts),
                                   atol=0, rtol=1e-6)


def test_the_reference_catches_a_one_layer_shift(tiny_lm_folder, tiny_vit_folder, features):
    """The tolerance is no blindfold: the official forward of layers one later differs from ours well past it."""
    folder = tiny_lm_folder("opt")
    model = paper_model(folder, tiny_vit_folder, "ePALM_vqa")
    shifted = paper_model(folder, tiny_vit_folder, "ePALM_vqa", inject_layers=[2, 3])
    shifted.load_state_dict(model.state_dict())
    reference = official_lm(model)
    texts = texts_of(model)
    with torch.no_grad():
        gap = (shifted.sequence_logits(features, texts) - official_logits(reference, model, features, texts)).abs()
    assert gap.max() > 1e-2


def test_the_visual_row_sees_later_columns(tiny_lm_folder, tiny_vit_folder, features):
    """As in the official code, the output depends on the padding: a row's logits change when the batch pads it,
    through the open visual row (a layer follows the last injection layer here)."""
    model = paper_model(tiny_lm_folder("opt"), tiny_vit_folder, "ePALM_pt_L_vqa")
    text = texts_of(model)[2]
    with torch.no_grad():
        alone = model.sequence_logits(features[2:], [text])
        padded = model.sequence_logits(features[2:].repeat(2, 1, 1), [text, text + text])[:1, :alone.shape[1]]
    assert not torch.allclose(alone, padded, **TOLERANCE)


def official_greedy(model: PaperLM, reference, features: torch.Tensor, question: str, steps: int) -> str:
    """The official decoding: the whole sequence recomputed for every new token (use_cache: False)."""
    text = model.prompt_ids([question])[0]
    for _ in range(steps):
        with torch.no_grad():
            text = text + [int(official_logits(reference, model, features, [text])[0, -1].argmax())]
    return model._decode(torch.tensor([text[len(model.prompt_ids([question])[0]):]]))[0]


@pytest.mark.parametrize("layers", [[1, 2], [2, 3]])
def test_exact_decoding_is_the_official_recomputation(layers, tiny_lm_folder, tiny_vit_folder, features):
    folder = tiny_lm_folder("opt")
    model = paper_model(folder, tiny_vit_folder, "ePALM_vqa", inject_layers=layers)
    reference = official_lm(model)
    options = {"max_new_tokens": 5, "min_new_tokens": 5, "num_beams": 1}
    exact = model.generate(features, QUESTIONS, use_cache=False, **options)
    assert exact == [official_greedy(model, reference, features[i:i + 1], q, 5) for i, q in enumerate(QUESTIONS)]
    if layers[-1] == 3:  # no layer after the last injection: the open row reads nothing the cache misses
        assert model.generate(features, QUESTIONS, **options) == exact


def test_paper_layout_refuses_what_it_cannot_lay_out(tiny_lm_folder, tiny_vit_folder):
    config = AdapterConfig(lm=tiny_lm_folder("opt"), encoder=tiny_vit_folder, layout="paper", connector="limber-1")
    with pytest.raises(ValueError, match="layout 'paper' .* needs connector 'epalm'"):
        build_model(config)


def test_the_answer_token_is_added_once(tiny_lm_folder, tiny_vit_folder):
    """``</a>`` is one token, added to the tokenizer; an LM whose embeddings have no row for it gets the mean row."""
    model = paper_model(tiny_lm_folder("llama"), tiny_vit_folder, "ePALM_pt_L_vqa")
    ids = model.prompt_ids(["what color"])[0]
    answer_token = model.tokenizer.convert_tokens_to_ids("</a>")
    assert ids[-1] == answer_token and ids.count(answer_token) == 1
    embeddings = model.lm.get_input_embeddings().weight
    torch.testing.assert_close(embeddings[answer_token], embeddings[:answer_token].mean(0))


def test_a_saved_paper_adapter_reloads_in_its_layout(tiny_lm_folder, tiny_vit_folder, features, tmp_path):
    """The folder records the layout: from_pretrained rebuilds the paper model, and decodes as before; an adapter
    whose decoding says ``use_cache: false`` recomputes, as ``generate(use_cache=False)`` does."""
    model = paper_model(tiny_lm_folder("opt"), tiny_vit_folder, "ePALM_vqa").float()
    model.config.generation = {"use_cache": False, "max_new_tokens": 4, "min_new_tokens": 4}
    model.save_pretrained(tmp_path)
    again = PaperLM.from_pretrained(tmp_path).eval()
    assert type(again) is PaperLM and again.config.layout == "paper"
    features = features.float()
    assert again.generate(features, QUESTIONS) == model.generate(features, QUESTIONS, use_cache=False)


def test_a_causal_visual_row_decodes_exactly_with_the_cache(tiny_lm_folder, tiny_vit_folder, features):
    """visual_row: causal closes what the cache cannot hold: cached decoding equals recomputation even with a layer
    after the last injection, and the padding of a batch no longer reaches a row's logits."""
    model = paper_model(tiny_lm_folder("opt"), tiny_vit_folder, "ePALM_pt_L_vqa", visual_row="causal")
    options = {"max_new_tokens": 5, "min_new_tokens": 5, "num_beams": 1}
    assert model.generate(features, QUESTIONS, **options) == model.generate(features, QUESTIONS, use_cache=False,
                                                                           **options)
    text = texts_of(model)[2]
    with torch.no_grad():
        alone = model.sequence_logits(features[2:], [text])
        padded = model.sequence_logits(features[2:].repeat(2, 1, 1), [text, text + text])[:1, :alone.shape[1]]
    torch.testing.assert_close(alone, padded, **TOLERANCE)


@pytest.mark.parametrize("arch", ["llama", "opt", "opt_proj", "gpt2", "qwen2", "gpt_neox", "phi", "gemma3"])
@pytest.mark.parametrize("visual_row", ["open", "causal"])
def test_cached_decoding_is_exact_where_the_official_function_allows(arch, visual_row, tiny_lm_folder,
                                                                      tiny_vit_folder, features):
    """On every supported decoder, cached greedy and beam decoding equal recomputation when nothing the cache
    holds could have read a later column: a causal visual row, or an open one injected up to the last layer; in a
    padded batch, and for one question alone, whose mask generate() drops (transformers would then read the text's
    restarting positions as packed sequences)."""
    layers = [1, 2] if visual_row == "causal" else [2, 3]
    model = paper_model(tiny_lm_folder(arch), tiny_vit_folder, "ePALM_vqa", inject_layers=layers,
                        visual_row=visual_row).float()
    features = features.float()
    for beams, count in ((1, 3), (3, 3), (1, 1)):
        options = {"max_new_tokens": 5, "min_new_tokens": 5, "num_beams": beams}
        asked, seen = QUESTIONS[:count], features[:count]
        assert model.generate(seen, asked, **options) == model.generate(seen, asked, use_cache=False, **options)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method. is deprecated:DeprecationWarning")  # torch's own
@pytest.mark.parametrize("layout", ["sensorium", "paper"])
def test_a_compiled_decode_step_decodes_as_the_eager_one(layout, tiny_lm_folder, tiny_vit_folder, features):
    """transformers' compiled generation (a static KV cache, the decode step through torch.compile, forced on the
    CPU) gives the eager token ids in both layouts: the injection leaves nothing a compiled step would miss."""
    from transformers import CompileConfig

    settings = {"visual_row": "causal"} if layout == "paper" else {}
    config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=3, inject_layers=[1, 2],
                           layout=layout, **settings)
    torch.manual_seed(1)
    model = build_model(config).eval()
    compiled = CompileConfig(fullgraph=False)
    compiled._compile_all_devices = True  # transformers compiles on accelerators only, unless told
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "num_beams": 1}
    features = features.float()
    assert model.generate(features, QUESTIONS, cache_implementation="static", compile_config=compiled,
                          **options) == model.generate(features, QUESTIONS, **options)
