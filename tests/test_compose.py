"""Composed models: several senses' adapters over one frozen LM, exact under the KV cache, saved and loaded."""

from __future__ import annotations

import json

import pytest
import torch

from sensorium import AdapterConfig, PerceptualLM
from sensorium.compose import (
    COMPOSITION_NAME,
    ComposedLM,
    Tuning,
    compose,
    is_composition,
    load_composed,
    sense_names,
    tune,
)
from sensorium.data.examples import Example
from sensorium.errors import BadInputError
from sensorium.lm import load_lm

QUESTIONS = ["what is the shape ?", "is there a red circle in the image ?", "color ?"]
LAYERS = [1, 2, 3]


def sense(lm, tokenizer, vit: str, seed: int, **settings) -> PerceptualLM:
    """An adapter over the shared tiny LM whose strong random connector and prompt visibly steer the words."""
    config = AdapterConfig(lm=lm.name_or_path, encoder=vit, num_blocks=3, **{"inject_layers": LAYERS, **settings})
    torch.manual_seed(seed)
    model = PerceptualLM(config, lm=lm, tokenizer=tokenizer)
    with torch.no_grad():
        for parameter in model.connector.parameters():
            parameter.normal_(0, 2.0)
        model.prompt.normal_(0, 1.0)
    return model.eval()


def composed(arch: str, tiny_lm_folder, tiny_vit_folder, second: str = "frames", positions: str = "parallel",
             mode: str = "prefix") -> ComposedLM:
    """An image sense (one slot column), then a second sense: frame by frame video (three columns), or an
    input connector (LiMBeR: its mapped token is the prefix itself, no injection)."""
    lm, tokenizer = load_lm(tiny_lm_folder(arch))
    image = sense(lm, tokenizer, tiny_vit_folder, 1, prompt_length=2)
    if second == "frames":
        other = sense(lm, tokenizer, f"frames:{tiny_vit_folder}", 2, num_frames=3, temporal="frames")
    else:
        other = sense(lm, tokenizer, tiny_vit_folder, 2, connector="limber-1", inject_layers=None)
    return ComposedLM([image, other], ["image", second], mode, positions).eval()


def features(model: ComposedLM, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, sum(model.feature_sizes), generator=generator)


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "qwen2", "gemma3"])
@pytest.mark.parametrize("second", ["frames", "limber"])
@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("positions", ["parallel", "serial"])
def test_composed_cached_generation_equals_full_recomputation(arch, second, num_beams, positions, tiny_lm_folder,
                                                              tiny_vit_folder):
    model = composed(arch, tiny_lm_folder, tiny_vit_folder, second, positions)
    feats = features(model, len(QUESTIONS))
    options = {"max_new_tokens": 8, "min_new_tokens": 4, "num_beams": num_beams}
    cached = model.generate(feats, QUESTIONS, **options)
    assert cached == model.generate_uncached(feats, QUESTIONS, **options)
    assert any(cached), "generation produced nothing to compare"


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "qwen2", "gemma3"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_selected_cached_generation_equals_full_recomputation(arch, num_beams, tiny_lm_folder, tiny_vit_folder):
    model = composed(arch, tiny_lm_folder, tiny_vit_folder, "limber", mode="select")
    feats = features(model, len(QUESTIONS))
    options = {"max_new_tokens": 8, "min_new_tokens": 4, "num_beams": num_beams}
    cached = model.generate(feats, QUESTIONS, **options)
    assert cached == model.generate_uncached(feats, QUESTIONS, **options)
    assert any(cached), "generation produced nothing to compare"


def test_selection_keeps_the_answer_its_own_sense_is_surest_of(tiny_lm_folder, tiny_vit_folder):
    """Each row's answer is one sense's own answer, the one that sense gives the higher log-likelihood; both
    senses win some rows here, so the choice is made per row."""
    model = composed("llama", tiny_lm_folder, tiny_vit_folder, mode="select")
    questions = QUESTIONS * 4
    feats = features(model, len(questions), seed=3)
    options = {"max_new_tokens": 5, "min_new_tokens": 1}
    parts = model.unpack(feats)
    alone = [sense.generate(part, questions, **options) for sense, part in zip(model.senses, parts, strict=True)]
    sure = torch.stack([sense.log_likelihood(part, questions, answers)
                        for sense, part, answers in zip(model.senses, parts, alone, strict=True)])
    winners = (sure[1] > sure[0]).long().tolist()
    assert set(winners) == {0, 1}, "the draw should let each sense win a row"
    expected = [alone[winner][row] for row, winner in enumerate(winners)]
    assert model.generate(feats, questions, **options) == expected


def test_log_likelihood_is_the_training_loss_summed_over_the_answer(tiny_lm_folder, tiny_vit_folder):
    """For one row, the mean cross-entropy times the answer's tokens (its end of text included); in a batch, each
    row's own value whatever the padding."""
    image = composed("llama", tiny_lm_folder, tiny_vit_folder).senses[0]
    feats = torch.randn(3, *image.layout.feature_shape, generator=torch.Generator().manual_seed(1))
    answers = ["red", "a big blue circle", ""]
    batched = image.log_likelihood(feats, QUESTIONS, answers)
    for row, answer in enumerate(answers):
        tokens = len(image.target_ids([answer])[0])
        with torch.no_grad():
            loss = image(feats[row:row + 1], QUESTIONS[row:row + 1], [answer])
        assert batched[row] < 0
        assert torch.allclose(batched[row], -loss * tokens, atol=1e-4)


def test_selection_neither_trains_nor_lays_out_one_sequence(tiny_lm_folder, tiny_vit_folder):
    """Senses injecting into different layers can be selected among (each runs alone), not laid out together;
    a selecting composition refuses to be tuned, in one line."""
    lm, tokenizer = load_lm(tiny_lm_folder("llama"))
    first = sense(lm, tokenizer, tiny_vit_folder, 1)
    deeper = sense(lm, tokenizer, tiny_vit_folder, 2, inject_layers=[2, 3])
    model = ComposedLM([first, deeper], ["a", "b"], "select").eval()
    assert model.selects and len(model.generate(features(model, 2), QUESTIONS[:2], max_new_tokens=3)) == 2
    examples = [Example(media="m0", question=QUESTIONS[0], answers=["red"])]
    with pytest.raises(ValueError, match="only a prefix composition can be tuned; this one selects") as error:
        tune(model, examples, features(model, 1), {"m0": 0}, Tuning(steps=1))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="same LM layers"):
        ComposedLM([first, deeper], ["a", "b"], "prefix")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize(("mode", "positions"), [("prefix", "parallel"), ("prefix", "serial"), ("select", "parallel")])
def test_composed_batched_answers_equal_single_answers(arch, mode, positions, tiny_lm_folder, tiny_vit_folder):
    model = composed(arch, tiny_lm_folder, tiny_vit_folder, positions=positions, mode=mode)
    feats = features(model, len(QUESTIONS))
    batched = model.generate(feats, QUESTIONS, max_new_tokens=6)
    assert batched == [model.generate(feats[i:i + 1], [q], max_new_tokens=6)[0] for i, q in enumerate(QUESTIONS)]


def test_each_sense_is_written_into_its_own_columns(tiny_lm_folder, tiny_vit_folder):
    """The layout is [bos][prompt 1][slot 1][prompt 2][slot x 3]: the injection layers receive the image's token in
    the first slot and the three frames' tokens in the second, and nothing else changes."""
    model = composed("llama", tiny_lm_folder, tiny_vit_folder)
    image, video = model.senses
    assert model.prefix_length == len(model.bos) + 2 + 1 + 1 + 3
    assert model.injector.offsets == (2, 4, 5, 6)
    feats = features(model, 2)
    _, tokens = model.perceive(feats)
    image_part, video_part = model.unpack(feats)
    assert torch.equal(tokens[:, :, :1], image.map_features(image_part)[:, :, None])
    assert torch.equal(tokens[:, :, 1:], video.map_features(video_part))
    seen = []
    layer = model.lm.model.layers[LAYERS[0]]
    hook = layer.register_forward_hook(lambda module, args, output: seen.append(args[0].clone()))
    embeds, mask = model._embed(model.prompt_ids(QUESTIONS[:2]), model.perceive(feats)[0])
    with model._injecting(tokens, mask):
        model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=model.positions(mask))
    hook.remove()
    start = model.slot_columns(mask)
    for row in range(2):
        slot = [int(start[row]) + offset for offset in model.injector.offsets]
        assert torch.equal(seen[0][row, slot], tokens[row, :, :, :][0].to(seen[0].dtype))


@pytest.mark.parametrize("positions", ["parallel", "serial"])
def test_each_sense_keeps_the_positions_it_was_trained_at(positions, tiny_lm_folder, tiny_vit_folder):
    """Parallel: [prompt 1 x2][slot 1] at 0 1, 2 and [prompt 2][slot 2 x3] at 0, 1 2 3 (after BOS, where the LM has
    one), as each adapter had them alone; the question follows the widest sense. Serial: one position per column.
    Padding shifts nothing."""
    model = composed("llama", tiny_lm_folder, tiny_vit_folder, positions=positions)
    _, mask = model._token_ids(model.prompt_ids([QUESTIONS[1], QUESTIONS[0]]))  # the second row is padded
    rows = model.positions(mask)
    pads = int(model._leading_pads(mask)[1])
    assert pads > 0 and torch.equal(rows[1, pads:], rows[0, :rows.shape[1] - pads]) and not rows[1, :pads].any()
    bos = len(model.bos)
    if positions == "parallel":
        prefix = list(range(bos)) + [bos + p for p in (0, 1, 2)] + [bos + p for p in (0, 1, 2, 3)]
        assert rows[0, :bos + 11].tolist() == prefix + [bos + 4 + p for p in range(4)]
    else:
        assert rows[0, :bos + 11].tolist() == list(range(bos + 11))


def test_every_sense_steers_the_answers(tiny_lm_folder, tiny_vit_folder):
    """Changing only one sense's features changes what the composed model says: both senses are heard."""
    model = composed("llama", tiny_lm_folder, tiny_vit_folder)
    feats = features(model, len(QUESTIONS))
    answers = model.generate(feats, QUESTIONS, max_new_tokens=6, min_new_tokens=6)
    for index in range(2):
        parts = model.unpack(feats)
        parts[index] = torch.randn(parts[index].shape, generator=torch.Generator().manual_seed(9))
        assert model.generate(model.pack(parts), QUESTIONS, max_new_tokens=6, min_new_tokens=6) != answers


def test_composed_refuses_mismatched_senses(tiny_lm_folder, tiny_vit_folder):
    lm, tokenizer = load_lm(tiny_lm_folder("llama"))
    other_lm, other_tokenizer = load_lm(tiny_lm_folder("llama"))
    first = sense(lm, tokenizer, tiny_vit_folder, 1)
    with pytest.raises(ValueError, match="sense 'b' has its own LM"):
        ComposedLM([first, sense(other_lm, other_tokenizer, tiny_vit_folder, 2)], ["a", "b"])
    with pytest.raises(ValueError, match=r"same LM layers: 'a' into \[1, 2, 3\]; 'b' into \[2, 3\]"):
        ComposedLM([first, sense(lm, tokenizer, tiny_vit_folder, 2, inject_layers=[2, 3])], ["a", "b"], "prefix")
    with pytest.raises(ValueError, match="plain folder names"):
        ComposedLM([first, sense(lm, tokenizer, tiny_vit_folder, 2)], ["a", "../b"])
    reordered = sense(lm, tokenizer, tiny_vit_folder, 2, column_order=["slot", "bos", "prompt"])
    with pytest.raises(ValueError, match="sense 'b' has column_order"):
        ComposedLM([first, reordered], ["a", "b"], "prefix")
    with pytest.raises(ValueError, match="at least two senses"):
        ComposedLM([first], ["a"])


def test_composition_round_trip(tiny_lm_folder, tiny_vit_folder, tmp_path):
    """Adapter folders composed by path, saved as one folder, loaded back: same tensors, same answers."""
    lm_folder = tiny_lm_folder("llama")
    lm, tokenizer = load_lm(lm_folder)
    folders = []
    for seed, (name, settings) in enumerate([("image", {}), ("video", {"encoder": f"frames:{tiny_vit_folder}",
                                                                         "num_frames": 3, "temporal": "frames"})]):
        model = sense(lm, tokenizer, settings.pop("encoder", tiny_vit_folder), seed, **settings)
        model.save_pretrained(tmp_path / name / "adapter")
        folders.append(tmp_path / name / "adapter")
    assert sense_names(folders) == ["image", "video"]
    for mode in ("select", "prefix"):
        model = compose(folders, mode=mode, positions="serial")
        feats = features(model, len(QUESTIONS))
        answers = model.generate(feats, QUESTIONS, max_new_tokens=6)
        model.save_pretrained(tmp_path / mode)
        assert is_composition(tmp_path / mode)
        saved = json.loads((tmp_path / mode / COMPOSITION_NAME).read_text())
        assert (saved["senses"], saved["mode"], saved["positions"]) == (["image", "video"], mode, "serial")
        loaded = load_composed(tmp_path / mode)
        assert loaded.names == ("image", "video") and loaded.composition == model.composition
        for before, after in zip(model.senses, loaded.senses, strict=True):
            assert before.adapter_state().keys() == after.adapter_state().keys()
            assert all(torch.equal(before.adapter_state()[k], after.adapter_state()[k])
                       for k in before.adapter_state())
        assert loaded.generate(feats, QUESTIONS, max_new_tokens=6) == answers
    # A composition.json written before the modes existed names no mode: it was a prefix composition.
    (tmp_path / "prefix" / COMPOSITION_NAME).write_text('{"senses": ["image", "video"]}')
    assert load_composed(tmp_path / "prefix").composition.mode == "prefix"
    fresh = compose(folders, fresh=True)
    assert not torch.equal(fresh.senses[0].prompt, model.senses[0].prompt)


def test_compose_refuses_adapters_of_different_lms(tiny_lm_folder, tiny_vit_folder, tmp_path):
    folders = []
    for arch in ("llama", "opt"):
        lm, tokenizer = load_lm(tiny_lm_folder(arch))
        sense(lm, tokenizer, tiny_vit_folder, 1).save_pretrained(tmp_path / arch)
        folders.append(tmp_path / arch)
    with pytest.raises(BadInputError, match="must share one frozen LM"):
        compose(folders)


@pytest.mark.parametrize(("text", "message"), [
    ('{"senses": ["a", "../etc"]}', "plain folder names"),
    ('{"senses": ["a", "b"], "format_version": 9}', "newer than this sensorium reads"),
    ('{"senses": ["a", "b"]}', r"no adapter folder for sense\(s\) \['a', 'b'\]"),
    ("[1, 2", "not valid JSON"),
    ('{"senses": ["a", "b"], "extra": 1}', "extra"),
    ('{"senses": ["a", "b"], "mode": "vote"}', "mode"),
])
def test_damaged_composition_files_are_one_line_errors(tmp_path, text, message):
    (tmp_path / COMPOSITION_NAME).write_text(text)
    with pytest.raises(BadInputError, match=message) as error:
        load_composed(tmp_path)
    assert str(tmp_path / COMPOSITION_NAME) in str(error.value) and "\n" not in str(error.value)


def test_composed_encode_reads_one_file_per_sense_or_one_for_all(tiny_lm_folder, tiny_vit_folder, image, tmp_path):
    lm, tokenizer = load_lm(tiny_lm_folder("llama"))
    first, second = sense(lm, tokenizer, tiny_vit_folder, 1), sense(lm, tokenizer, tiny_vit_folder, 2)
    model = ComposedLM([first, second], ["a", "b"])
    both = model.encode([image])
    assert torch.equal(both, model.pack([first.encode([image]), second.encode([image])]))
    from PIL import Image

    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "red.png")
    apart = model.encode([(image, str(tmp_path / "red.png"))])
    assert torch.equal(apart, model.pack([first.encode([image]), second.encode([str(tmp_path / "red.png")])]))
    with pytest.raises(BadInputError, match="3 media for 2 senses"):
        model.encode([(image, image, image)])
    cached, row_of, errors = model.features_of([image, str(tmp_path / "red.png")], 4, 0, False)
    assert not errors and torch.allclose(cached[row_of[image]], both[0])


def test_tuning_trains_every_sense_and_leaves_the_lm_frozen(tiny_lm_folder, tiny_vit_folder):
    model = composed("llama", tiny_lm_folder, tiny_vit_folder)
    frozen = {name: p.clone() for name, p in model.lm.named_parameters()}
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    examples = [Example(media=f"m{i}", question=QUESTIONS[i % 3], answers=["red circle"]) for i in range(6)]
    feats = features(model, 6)
    losses = tune(model, examples, feats, {f"m{i}": i for i in range(6)}, Tuning(steps=8, batch_size=4, lr=1e-2,
                                                                                   prompt_lr=1e-2, warmup_steps=1))
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[name]) for name, p in model.lm.named_parameters())
    changed = {name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trained[name])}
    assert {name.split(".")[1] for name in changed} == {"0", "1"}


def test_compose_tune_eval_and_ask_from_the_command_line(tiny_lm_folder, tiny_vit_folder, tmp_path, capsys):
    """``compose`` writes a composed model (tuned on a manifest), which ``eval`` scores and ``ask`` answers with,
    as ``ask --adapter A --adapter B`` does straight from the adapter folders."""
    from sensorium.cli import main
    from sensorium.testing import colour_squares

    lm, tokenizer = load_lm(tiny_lm_folder("llama"))
    folders = []
    for seed, name in enumerate(["left", "right"], start=1):
        sense(lm, tokenizer, tiny_vit_folder, seed).save_pretrained(tmp_path / name)
        folders.append(str(tmp_path / name))
    train, test = colour_squares(tmp_path / "squares", "vqa")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"media": e.media, "question": e.question, "answer": e.answers[0]}) + "\n"
                                for e in train + test))
    out = tmp_path / "composed"
    assert main(["compose", *folders, "--out", str(out), "--tune", str(manifest), "--steps", "3",
                 "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "composed left, right over" in printed and "(prefix)" in printed
    assert "tuned 3 steps on 12 examples" in printed
    assert load_composed(out).names == ("left", "right") and load_composed(out).composition.mode == "prefix"
    assert main(["compose", *folders, "--out", str(tmp_path / "selected")]) == 0
    assert "(select): each answers alone" in capsys.readouterr().out
    assert load_composed(tmp_path / "selected").selects
    assert main(["compose", *folders, "--out", str(tmp_path / "bad"), "--mode", "select", "--tune", str(manifest)]) == 2
    assert "needs --mode prefix" in capsys.readouterr().err
    assert main(["eval", str(out), "--data", str(manifest), "--max-new-tokens", "2",
                 "--predictions", str(tmp_path / "predictions.jsonl")]) == 0
    assert "accuracy" in capsys.readouterr().out.lower()
    image, other = test[0].media, test[1].media
    for command in (["ask", str(out), image, "what color ?"], ["ask", str(out), image, other, "what color ?"],
                    ["ask", "--adapter", folders[0], "--adapter", folders[1], image, "what color ?"]):
        assert main([*command, "--max-new-tokens", "2", "--min-new-tokens", "2"]) == 0
        assert capsys.readouterr().out.strip()
    assert main(["ask", str(out), image, other, image, "what color ?"]) == 2
    assert "3 media for 2 senses" in capsys.readouterr().err
    assert main(["ask", folders[0], image, other, "what color ?"]) == 2
    assert "2 media files for one adapter" in capsys.readouterr().err
    assert main(["compose", *folders, "--out", str(tmp_path / "fresh"), "--fresh"]) == 2
    assert "--fresh starts every sense untrained" in capsys.readouterr().err
