"""One bounds table (schema.BOUNDS) for every size that reaches an allocator or a loop, whatever gives it: a
command-line flag, a recipe, an adapter's config, a server option."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorium.cli import build_parser
from sensorium.config import AdapterConfig, Decoding
from sensorium.recipe import Recipe
from sensorium.schema import BOUNDS, bounded_flag
from sensorium.serve.settings import ServeSettings


def _in_bounds(name: str) -> st.SearchStrategy:
    low, high = BOUNDS[name]
    return st.floats(low, high) if isinstance(low, float) else st.integers(low, high)


def _out_of_bounds(name: str) -> st.SearchStrategy:
    low, high = BOUNDS[name]
    if isinstance(low, float):
        return st.floats(max_value=low, exclude_max=True) | st.floats(min_value=high, exclude_min=True) | \
            st.just(math.nan)
    return st.integers(max_value=low - 1) | st.integers(min_value=high + 1)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(BOUNDS)), value=st.integers() | st.floats() | st.text(max_size=12))
def test_a_size_flag_accepts_exactly_its_range(name, value):
    low, high = BOUNDS[name]
    try:
        parsed = bounded_flag(name)(str(value))
    except argparse.ArgumentTypeError as error:
        assert str(error).startswith("must be ")
        return
    assert low <= parsed <= high and math.isfinite(parsed)
    assert isinstance(parsed, float if isinstance(low, float) else int)


def _size_flags() -> list[tuple[list[str], str, str]]:
    """(the verb's words, the flag, its size's name) for every flag of every verb typed by the bounds table."""
    found = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for verb, sub in action.choices.items():
                    walk(sub, [*words, verb])
            elif action.option_strings and action.type is not None and action.type.__name__ in BOUNDS:
                found.append((words, action.option_strings[0], action.type.__name__))

    walk(build_parser(), [])
    return found


SIZE_FLAGS = _size_flags()


def test_every_count_flag_is_bounded():
    """No flag of a whole number or a float is read without a bound: each count or size goes through the table."""
    unbounded = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for verb, sub in action.choices.items():
                    walk(sub, [*words, verb])
            elif action.type in (int, float):
                unbounded.append(f"{' '.join(words)} {action.option_strings[0]}")

    walk(build_parser(), [])
    assert not [flag for flag in unbounded if not flag.endswith("--seed")]
    assert len(SIZE_FLAGS) > 30


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_flag_out_of_its_range_is_refused_naming_the_flag(data, capsys):
    words, flag, name = data.draw(st.sampled_from(SIZE_FLAGS))
    value = data.draw(_out_of_bounds(name))
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*words, f"{flag}={value}"])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be " in capsys.readouterr().err


# Every bounded field of the declared settings, by where it is written and the size it is.
RECIPE_FIELDS = [("training", key, name) for key, name in [
    ("batch_size", "batch_size"), ("max_steps", "steps"), ("warmup_steps", "step_count"),
    ("gradient_accumulation", "batch_size"), ("eval_every", "step_count"), ("quick_eval_size", "examples"),
    ("checkpoint_every", "steps"), ("keep_checkpoints", "keep_checkpoints"), ("cache_batch_size", "batch_size"),
    ("cache_workers", "workers"), ("lr", "learning_rate"), ("prompt_lr", "learning_rate")]] + [
    ("model", key, name) for key, name in [
        ("prompt_length", "prompt_length"), ("num_blocks", "blocks"), ("image_size", "image_size"),
        ("num_frames", "frames")]] + [("generation", key, key) for key in [
            "max_new_tokens", "min_new_tokens", "num_beams", "no_repeat_ngram_size", "length_penalty",
            "repetition_penalty"]]
SERVE_FIELDS = [("max_batch_size", "requests"), ("max_wait_ms", "wait_ms"), ("max_upload_bytes", "upload_bytes"),
                ("max_question_chars", "question_chars"), ("max_new_tokens", "max_new_tokens"),
                ("max_beams", "num_beams"), ("request_timeout_s", "seconds"), ("max_audio_seconds", "seconds")]


def _recipe(section: str, key: str, value) -> dict:
    values = {section: {key: value}}
    if (section, key) == ("generation", "min_new_tokens"):
        values["generation"]["max_new_tokens"] = BOUNDS["max_new_tokens"].high
    return values


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_recipe_adapter_and_decoding_fields_hold_their_range(data):
    section, key, name = data.draw(st.sampled_from(RECIPE_FIELDS))
    with pytest.raises(ValueError, match=f"{section}.{key} must be"):
        Recipe.from_dict(_recipe(section, key, data.draw(_out_of_bounds(name))))
    Recipe.from_dict(_recipe(section, key, data.draw(_in_bounds(name))))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_an_adapters_saved_decoding_is_held_to_the_same_range(data):
    key = data.draw(st.sampled_from(["max_new_tokens", "num_beams", "no_repeat_ngram_size"]))
    with pytest.raises(ValueError, match=f"generation.{key} must be"):
        AdapterConfig.from_dict({"generation": {key: data.draw(_out_of_bounds(key))}})
    assert Decoding.checked({key: data.draw(_in_bounds(key))})


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_server_settings_hold_their_range(data):
    key, name = data.draw(st.sampled_from(SERVE_FIELDS))
    with pytest.raises(ValueError):
        ServeSettings(**{key: data.draw(_out_of_bounds(name))})
    assert getattr(ServeSettings(**{key: data.draw(_in_bounds(name))}), key) is not None
