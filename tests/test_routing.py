"""Question statistics (routing.py): what an adapter was trained to be asked, recorded beside its weights, read back
through the checks every adapter file gets."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sensorium import AdapterConfig, PerceptualLM
from sensorium.config import QUESTIONS_NAME
from sensorium.errors import BadInputError
from sensorium.lm import load_lm
from sensorium.routing import MAX_QUESTIONS_BYTES, embed_questions, question_stats, read_question_stats

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
