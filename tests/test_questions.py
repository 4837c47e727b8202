"""Any text reaching the tokenizer, from any source (the command line, a manifest, a request): it is answered, or
refused in one line when it is not text (a lone surrogate) or does not fit the LM's context; never a traceback."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from sensorium import PerceptualLM
from sensorium.cli import main
from sensorium.errors import BadInputError
from sensorium.testing import WORDS

# Words of the tiny tokenizer, other text it reads as unknown tokens, and lone surrogates.
CHARACTERS = st.characters(codec=None, categories=["L", "N", "P", "Zs", "Cs"])
QUESTIONS = st.lists(st.sampled_from(WORDS) | st.text(CHARACTERS, min_size=1, max_size=4), max_size=160).map(" ".join)


@pytest.fixture(scope="module")
def model(tiny_adapter_folders) -> PerceptualLM:
    return PerceptualLM.from_pretrained(tiny_adapter_folders["shapes"]).eval()


@pytest.fixture(scope="module")
def features(model) -> torch.Tensor:
    return model.encode([Image.new("RGB", (32, 32), "red")])


def _is_text(question: str) -> bool:
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=QUESTIONS, new_tokens=st.integers(1, 40))
def test_any_question_is_answered_or_refused_in_one_line(model, features, question, new_tokens):
    fits = _is_text(question) and (model.prefix_length + len(model.prompt_ids([question])[0]) + new_tokens
                                   <= model.lm.config.max_position_embeddings)
    event("answered" if fits else "refused")
    if fits:
        assert len(model.generate(features, [question], max_new_tokens=new_tokens)) == 1
    else:
        with pytest.raises(BadInputError) as refused:
            model.generate(features, [question], max_new_tokens=new_tokens)
        assert "\n" not in str(refused.value)


def test_the_command_line_refuses_a_byte_that_is_not_utf8_and_a_question_past_the_context(
        tiny_adapter_folders, image, capsys):
    adapter = tiny_adapter_folders["shapes"]
    assert main(["ask", adapter, image, "what \udcff color ?"]) == 2  # how Python reads the byte 0xff in argv
    assert "character 6 is a lone surrogate" in capsys.readouterr().err
    assert main(["ask", adapter, image, "what " * 200]) == 2
    assert "does not fit the LM's 128 positions" in capsys.readouterr().err
