"""Question statistics (routing.py): what an adapter was trained to be asked, recorded beside its weights, read back
through the checks every adapter file gets, and the composed model's rules that read them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sensorium import AdapterConfig, PerceptualLM
from sensorium.compose import COMPOSITION_NAME, ComposedLM, compose, load_composed
from sensorium.config import QUESTIONS_NAME, SELECT_RULES
from sensorium.errors import BadInputError
from sensorium.lm import load_lm
from sensorium.routing import MAX_QUESTIONS_BYTES, embed_questions, question_stats, read_question_stats
from sensorium.testing import WORDS, save_tiny_lm

WIDTH = 32  # the tiny LMs' hidden width


def steered_sense(lm, tokenizer, vit: str, seed: int, **settings) -> PerceptualLM:
    """An adapter whose strong random connector and prompt visibly steer the words."""
    config = AdapterConfig(lm=lm.name_or_path, encoder=vit, num_blocks=3, inject_layers=[1, 2, 3], **settings)
    torch.manual_seed(seed)
    model = PerceptualLM(config, lm=lm, tokenizer=tokenizer)
    with torch.no_grad():
        for parameter in model.connector.parameters():
            parameter.normal_(0, 2.0)
        model.prompt.normal_(0, 1.0)
    return model.eval()


# ---- the statistics file ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "qwen2", "gemma3"])
def test_question_statistics_round_trip_and_describe_their_questions(arch, tiny_lm_folder, tmp_path):
    """Saved and read back exactly; the centroid is the questions' mean embedding and the spread their root mean
    square distance from it, so a recorded question lies about one spread away on average; a question's embedding
    is the same alone or padded in a batch."""
    lm, tokenizer = load_lm(tiny_lm_folder(arch))
    questions = ["what color is the shape ?", "is there a red circle ?", "how many circle ?", ""]
    stats = question_stats(lm, tokenizer, questions)
    embeddings = embed_questions(lm, tokenizer, questions)
    assert embeddings.shape == (4, WIDTH) and torch.isfinite(embeddings).all()
    assert torch.allclose(stats.centroid, embeddings.mean(0), atol=1e-6) and stats.count == 4
    assert stats.distances(embeddings).pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)
    stats.save(tmp_path)
    read = read_question_stats(tmp_path, WIDTH)
    assert torch.equal(read.centroid, stats.centroid) and (read.spread, read.count) == (stats.spread, stats.count)
    assert read_question_stats(tmp_path / "elsewhere", WIDTH) is None
    alone = torch.cat([embed_questions(lm, tokenizer, [question]) for question in questions])
    assert torch.allclose(embeddings, alone, atol=1e-5), "padding changes no question's embedding"


def test_an_adapter_keeps_its_statistics_and_drops_stale_ones(tiny_lm_folder, tiny_vit_folder, tmp_path):
    lm, tokenizer = load_lm(tiny_lm_folder("llama"))
    model = steered_sense(lm, tokenizer, tiny_vit_folder, 1)
    model.questions = question_stats(lm, tokenizer, ["what color is the shape ?", "how many circle ?"])
    model.save_pretrained(tmp_path)
    loaded = PerceptualLM.from_pretrained(tmp_path, lm=lm, tokenizer=tokenizer)
    assert torch.equal(loaded.questions.centroid, model.questions.centroid)
    model.questions = None
    model.save_pretrained(tmp_path)  # a new adapter over the old folder: its statistics would not be its own
    assert not (tmp_path / QUESTIONS_NAME).exists()
    assert PerceptualLM.from_pretrained(tmp_path, lm=lm, tokenizer=tokenizer).questions is None


def good_tensors() -> dict[str, torch.Tensor]:
    return {"centroid": torch.randn(WIDTH), "spread": torch.tensor(1.5), "count": torch.tensor(4)}


@pytest.mark.parametrize(("damage", "message"), [
    (lambda path: path.write_bytes(path.read_bytes()[:40]), "not a readable safetensors file"),
    (lambda path: path.write_bytes(b"\0" * (MAX_QUESTIONS_BYTES + 1)), "more than the"),
    (lambda path: save_file({**good_tensors(), "centroid": torch.randn(WIDTH + 1)}, path),
     r"tensor 'centroid' has shape \[33\], the LM expects \[32\]"),
    (lambda path: save_file({**good_tensors(), "spread": torch.tensor(float("nan"))}, path),
     "tensor 'spread' is torch.float32: not finite floating point values"),
    (lambda path: save_file({**good_tensors(), "centroid": torch.ones(WIDTH, dtype=torch.int64)}, path),
     "tensor 'centroid' is torch.int64"),
    (lambda path: save_file({**good_tensors(), "count": torch.tensor(4.0)}, path), "tensor 'count' is torch.float32"),
    (lambda path: save_file({**good_tensors(), "count": torch.tensor(0)}, path), "at least one question"),
    (lambda path: save_file({**good_tensors(), "spread": torch.tensor(-1.0)}, path), "a spread is at least 0"),
    (lambda path: save_file({**good_tensors(), "extra": torch.zeros(1)}, path), "hold tensors"),
    (lambda path: (path.unlink(), path.mkdir()), "not a regular file"),
])
def test_damaged_statistics_are_one_line_errors_naming_the_file(damage, message, tiny_lm_folder, tiny_vit_folder,
                                                               tmp_path):
    """Read as an adapter's weights are: bounded, exact keys, shapes and dtypes, finite values; loading the adapter
    or composing it stops at the file."""
    lm, tokenizer = load_lm(tiny_lm_folder("llama"))
    steered_sense(lm, tokenizer, tiny_vit_folder, 1).save_pretrained(tmp_path)
    path = tmp_path / QUESTIONS_NAME
    save_file(good_tensors(), path)
    damage(path)
    for read in (lambda: read_question_stats(tmp_path, WIDTH),
                 lambda: PerceptualLM.from_pretrained(tmp_path, lm=lm, tokenizer=tokenizer)):
        with pytest.raises(BadInputError, match=message) as error:
            read()
        assert str(path) in str(error.value) and "\n" not in str(error.value)


# ---- the select rules ---------------------------------------------------------------------------
# A picture sense is asked about colours and motion, a sound sense about beeps; the sound sense answers "3" to
# anything, surer of it than the picture sense is of its own answers.
PICTURE_QUESTIONS = ["what color is the star ?", "what color does the square turn ?", "where does the star move ?",
                     "where does the blue square move ?"]
SOUND_QUESTIONS = ["how many beeps are there ?", "how many times does it ring ?",
                   "how many beeps does the sound make ?"]
SENSE_WORDS = (*WORDS, "3", "star", "square", "turn", "move", "where", "beeps", "make", "sound", "times", "it",
               "ring")
WIDTH = 32  # the tiny LMs' hidden width


def teach_to_ignore_the_media(model: PerceptualLM, questions: list[str], answer: str, steps: int = 60) -> None:
    """Train the soft prompt to give ``answer`` to every question, the connector silenced: whatever the media."""
    with torch.no_grad():
        for parameter in model.connector.parameters():
            parameter.zero_()
    features = torch.zeros(len(questions), *model.layout.feature_shape)
    optimizer = torch.optim.Adam([model.prompt, model.slot_embedding], lr=1e-1)
    model.train()
    for _ in range(steps):
        model(features, questions, [answer] * len(questions)).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.fixture
def senses(tiny_vit_folder, tmp_path):
    """Folders of a picture sense and a sound sense, each with the statistics of its own questions."""
    lm, tokenizer = load_lm(save_tiny_lm(tmp_path / "lm", "llama", words=SENSE_WORDS))
    picture = steered_sense(lm, tokenizer, tiny_vit_folder, 1)
    sound = steered_sense(lm, tokenizer, tiny_vit_folder, 2, prompt_length=8)  # room to learn one answer
    teach_to_ignore_the_media(sound, PICTURE_QUESTIONS + SOUND_QUESTIONS, "3")
    picture.questions = question_stats(lm, tokenizer, PICTURE_QUESTIONS)
    sound.questions = question_stats(lm, tokenizer, SOUND_QUESTIONS)
    for name, model in (("picture", picture), ("sound", sound)):
        model.save_pretrained(tmp_path / name)
    return [tmp_path / "picture", tmp_path / "sound"]


def test_routing_keeps_the_sense_the_question_asks_about(senses, tmp_path):
    """Selected by likelihood, every question gets the sound sense's confident "3", colour questions too; routed by
    the questions each sense was trained on, the picture sense answers the picture questions and the sound sense
    the sound questions, and the rule survives saving."""
    asked = PICTURE_QUESTIONS + SOUND_QUESTIONS
    options = {"max_new_tokens": 3}
    by_likelihood = compose(senses, mode="select", rule="likelihood")
    features = torch.randn(len(asked), sum(by_likelihood.feature_sizes), generator=torch.Generator().manual_seed(7))
    picture_part = by_likelihood.unpack(features)[0]
    picture_alone = by_likelihood.senses[0].generate(picture_part, asked, **options)
    assert "3" not in picture_alone and all(picture_alone)
    assert by_likelihood.generate(features, asked, **options) == ["3"] * len(asked)
    routed = compose(senses, mode="select", rule="route")
    expected = picture_alone[:len(PICTURE_QUESTIONS)] + ["3"] * len(SOUND_QUESTIONS)
    assert routed.generate(features, asked, **options) == expected
    assert routed.generate_uncached(features, asked, **options) == expected
    routed.save_pretrained(tmp_path / "routed")
    assert json.loads((tmp_path / "routed" / COMPOSITION_NAME).read_text())["rule"] == "route"
    reloaded = load_composed(tmp_path / "routed")
    assert reloaded.composition.rule == "route" and reloaded.generate(features, asked, **options) == expected
    assert torch.equal(reloaded.senses[1].questions.centroid, routed.senses[1].questions.centroid)


def test_route_and_likelihood_adds_the_question_prior_to_each_answers_likelihood(senses):
    """route+likelihood keeps, per row, the answer whose log-likelihood plus the log-probability that the question is
    its sense's is highest; that probability sums to one over the senses and is highest for the nearest sense."""
    asked = PICTURE_QUESTIONS + SOUND_QUESTIONS
    model = compose(senses, mode="select", rule="route+likelihood")
    features = torch.randn(len(asked), sum(model.feature_sizes), generator=torch.Generator().manual_seed(8))
    priors = model.question_log_priors(asked)
    assert torch.allclose(priors.exp().sum(0), torch.ones(len(asked)))
    assert torch.equal(priors.argmax(0), model.question_distances(asked).argmin(0))
    assert priors.argmax(0).tolist() == [0] * len(PICTURE_QUESTIONS) + [1] * len(SOUND_QUESTIONS)
    parts = model.unpack(features)
    alone = [sense.generate(part, asked, max_new_tokens=3) for sense, part in zip(model.senses, parts, strict=True)]
    scores = torch.stack([sense.log_likelihood(part, asked, answers)
                          for sense, part, answers in zip(model.senses, parts, alone, strict=True)]) + priors
    expected = [alone[sense][row] for row, sense in enumerate(scores.argmax(0).tolist())]
    assert model.generate(features, asked, max_new_tokens=3) == expected


def test_routing_rules_need_every_senses_statistics(senses, tmp_path):
    assert compose(senses).composition.rule == "route"  # the default where every sense records its questions
    assert compose(senses, mode="prefix").composition.rule == "likelihood"  # a prefix composition selects nothing
    (senses[1] / QUESTIONS_NAME).unlink()
    assert compose(senses, mode="select").composition.rule == "likelihood"  # ... and where one does not
    for rule in ("route", "route+likelihood"):
        with pytest.raises(BadInputError, match=r"sense\(s\) \['sound'\] have no questions.safetensors") as error:
            compose(senses, mode="select", rule=rule)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="rule 'route' chooses among answers: it needs mode select, not prefix"):
        ComposedLM([PerceptualLM.from_pretrained(senses[0])] * 2, ["a", "b"], "prefix", rule="route")


def test_composition_files_name_a_known_rule(senses, tmp_path):
    """A file without a rule (written before the rules) selects by likelihood; an unknown rule is refused in one
    line naming the file."""
    composed = tmp_path / "composed"
    compose(senses, mode="select").save_pretrained(composed)
    (composed / COMPOSITION_NAME).write_text('{"senses": ["picture", "sound"], "mode": "select"}')
    assert load_composed(composed).composition.rule == "likelihood"
    for text, message in (('{"senses": ["picture", "sound"], "mode": "select", "rule": "vote"}', "rule"),
                          ('{"senses": ["picture", "sound"], "rule": "route"}', "needs mode select")):
        (composed / COMPOSITION_NAME).write_text(text)
        with pytest.raises(BadInputError, match=message) as error:
            load_composed(composed)
        assert str(composed / COMPOSITION_NAME) in str(error.value) and "\n" not in str(error.value)
    assert set(SELECT_RULES) == {"likelihood", "route", "route+likelihood"}


# ---- the command line ---------------------------------------------------------------------------
def test_questions_then_compose_by_route_from_the_command_line(tiny_lm_folder, tiny_vit_folder, tmp_path, capsys):
    """``questions`` records an adapter's statistics from data; ``compose --rule route`` needs them for every sense
    (the default rule, route, falls back to likelihood without them, saying so), and a select rule needs select mode;
    the routed model is evaluated like any other."""
    from sensorium.cli import main
    from sensorium.testing import colour_squares

    lm, tokenizer = load_lm(tiny_lm_folder("llama"))
    folders = []
    for seed, name in enumerate(["picture", "sound"], start=1):
        steered_sense(lm, tokenizer, tiny_vit_folder, seed).save_pretrained(tmp_path / name)
        folders.append(str(tmp_path / name))
    train, test = colour_squares(tmp_path / "squares", "vqa")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"media": e.media, "question": e.question, "answer": e.answers[0]}) + "\n"
                                for e in train + test))
    assert main(["questions", folders[0], "--data", str(manifest)]) == 0
    assert "recorded 12 of 12 questions" in capsys.readouterr().out
    assert read_question_stats(folders[0], WIDTH).count == 12
    assert main(["questions", folders[1]]) == 2
    assert "records no training data (an adapter saved outside train): give --data" in capsys.readouterr().err
    assert main(["compose", *folders, "--rule", "route", "--out", str(tmp_path / "routed")]) == 2
    assert "sense(s) ['sound'] have no questions.safetensors" in capsys.readouterr().err
    assert main(["compose", *folders, "--out", str(tmp_path / "by-default")]) == 0  # the default falls back, saying so
    assert "rule likelihood, not route: sense(s) ['sound'] record no training questions" in capsys.readouterr().out
    assert main(["questions", folders[1], "--data", str(manifest)]) == 0
    assert main(["compose", *folders, "--out", str(tmp_path / "by-default-now")]) == 0
    assert "the sense its question resembles answers" in capsys.readouterr().out
    assert main(["compose", *folders, "--rule", "route", "--mode", "prefix", "--out", str(tmp_path / "x")]) == 2
    assert "--rule route chooses among the senses' answers: it needs --mode select" in capsys.readouterr().err
    assert main(["compose", *folders, "--rule", "route", "--out", str(tmp_path / "routed")]) == 0
    assert "(select): each answers alone, the sense its question resembles answers" in capsys.readouterr().out
    assert (tmp_path / "routed" / "sound" / QUESTIONS_NAME).is_file()
    assert main(["eval", str(tmp_path / "routed"), "--data", str(manifest), "--max-new-tokens", "2",
                 "--predictions", str(tmp_path / "predictions.jsonl")]) == 0
    assert "accuracy" in capsys.readouterr().out.lower()

