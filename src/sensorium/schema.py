"""Declared settings checked once: the adapter config and the recipe are pydantic dataclasses, and every
problem a user's file has is reported in one line that names each wrong field and why.

Field types say what is accepted (``StrictInt``: YAML's ``"3"`` is not a number of blocks, ``StrictBool``:
``"no"`` is not false); this module turns pydantic's errors into the house's one-line messages.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

T = TypeVar("T")


def _yaml_number(value: Any) -> Any:
    """YAML reads 3e-4 (no dot) as a string: accept it as the number it means; anything else stays as given."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# Field types of the declared settings. Integers are strict: neither a bool, a float nor a string of digits.
Integer = Annotated[int, Field(strict=True)]
Count = Annotated[int, Field(strict=True, gt=0)]
NonNegative = Annotated[int, Field(strict=True, ge=0)]
# Floats are finite; a string YAML left unparsed ('3e-4') is read as the number it means.
PositiveNumber = Annotated[float, BeforeValidator(_yaml_number), Field(strict=True, allow_inf_nan=False, gt=0)]
NonNegativeNumber = Annotated[float, BeforeValidator(_yaml_number), Field(strict=True, allow_inf_nan=False, ge=0)]



class Bound(NamedTuple):
    """The accepted range of one kind of size: whole numbers unless ``low`` is a float."""

    low: int | float
    high: int | float


# Every size that reaches an allocator or a loop, with the range accepted from any source: a command-line flag,
# a recipe, an adapter's config, a server option or a request. A value past ``high`` would not fail cleanly: it
# would ask torch for tens of GB, or loop for hours, before anything said why. The ranges are generous: a 7B LM
# at batch 4096 or 2,048 new tokens is a large job, not a typo.
BOUNDS: dict[str, Bound] = {
    "batch_size": Bound(1, 65_536),  # examples per step, per generate() call, per encoder forward
    "steps": Bound(1, 100_000_000),  # optimizer steps (and spacing of checkpoints and evaluations)
    "step_count": Bound(0, 100_000_000),  # warm-up steps; 0: none
    "examples": Bound(1, 1_000_000_000),  # a sample or a held-out part of a data set
    "generated": Bound(1, 10_000_000),  # media files a data generator makes, per split
    "keep_checkpoints": Bound(1, 1_000),
    "workers": Bound(0, 256),  # processes or threads; 0: the calling one
    "prompt_length": Bound(0, 1_024),  # soft-prompt columns
    "blocks": Bound(1, 1_024),  # encoder blocks read
    "layer": Bound(0, 1_023),  # an encoder block's or an LM layer's index
    "image_size": Bound(1, 4_096),  # pixels a side
    "frames": Bound(1, 1_024),  # frames sampled per video
    "interpolation_steps": Bound(2, 1_001),  # weights from 0 to 1, both ends included
    "learning_rate": Bound(1e-12, 1_000.0),  # NaN or 0 would train nothing, silently
    # Decoding: the tokens of one answer, the beams searched for it, the n-gram never repeated.
    "max_new_tokens": Bound(1, 2_048),
    "min_new_tokens": Bound(0, 2_048),
    "num_beams": Bound(1, 64),
    "no_repeat_ngram_size": Bound(0, 64),
    "length_penalty": Bound(-100.0, 100.0),
    "repetition_penalty": Bound(0.01, 100.0),
    "temperature": Bound(1e-6, 100.0),  # sampling; 0 is greedy decoding, said by do_sample: false
    "top_p": Bound(1e-6, 1.0),
    "question_chars": Bound(1, 100_000),  # a question, before its tokens are counted against the LM's context
    # The server's own options.
    "port": Bound(1, 65_535),
    "requests": Bound(1, 1_024),  # requests answered by one generate() call
    "wait_ms": Bound(0.0, 60_000.0),
    "upload_mb": Bound(0.001, 4_096.0),
    "upload_bytes": Bound(1_024, 4_096 * 2**20),
    "pixels": Bound(1, 1_000_000_000),
    "seconds": Bound(0.001, 86_400.0),
}


def bounded(name: str, strict: bool = True) -> Any:
    """The field type of the size ``name`` (see BOUNDS): a whole number, or a finite float, in its range."""
    low, high = BOUNDS[name]
    if isinstance(low, float):
        return Annotated[float, BeforeValidator(_yaml_number),
                         Field(strict=strict, ge=low, le=high, allow_inf_nan=False)]
    return Annotated[int, Field(strict=strict, ge=low, le=high)]


def bounded_flag(name: str) -> Callable[[str], int | float]:
    """An argparse type of the size ``name``: argparse names the flag in front of the message."""
    adapter = TypeAdapter(bounded(name, strict=False))

    def parse(text: str) -> int | float:
        try:
            return adapter.validate_python(text)
        except ValidationError as error:
            raise argparse.ArgumentTypeError(describe(error).removeprefix("value ").replace(repr(text), text)) \
                from None

    parse.__name__ = name  # argparse says "invalid NAME value" for other errors
    return parse


# What each pydantic error type means, said after the field's name.
_PREDICATES = {
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
    "int_type": "must be a number", "int_parsing": "must be a whole number", "float_type": "must be a number",
    "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "int_from_float": "must be a whole number", "int_parsing_size": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "string_type": "must be a string", "list_type": "must be a list",
    "dict_type": "must be a mapping", "dataclass_type": "must be a mapping", "literal_error": "not one of {expected}",
    "unexpected_keyword_argument": "is not a known setting",
}
_INPUT_CHARS = 60


def _problem(error: dict[str, Any], prefix: str) -> str:
    field = (prefix + ".".join(str(part) for part in error["loc"])).removesuffix(".") or "value"
    given = repr(error["input"])
    given = given if len(given) <= _INPUT_CHARS else given[:_INPUT_CHARS] + "..."
    error_type = error["type"]
    if error_type == "value_error":  # our own validators say the whole reason, naming the field when no loc does
        reason = error["msg"].removeprefix("Value error, ")
        return f"{field}: {reason}" if error["loc"] or prefix else reason
    if error_type == "literal_error":
        hint = " (YAML reads a bare yes/no/on/off as true/false: quote it)" if isinstance(error["input"], bool) else ""
        return f"{field} '{error['input']}' {_PREDICATES[error_type].format(**error['ctx'])}{hint}"
    if error_type in _PREDICATES:
        return f"{field} {_PREDICATES[error_type].format(**error.get('ctx', {}))}, not {given}"
    return f"{field}: {error['msg']} (got {given})"


def describe(error: ValidationError, prefix: str = "") -> str:
    """Every problem of a validation, one line: ``training.batch_size must be > 0, not 0; model.num_blocks ...``."""
    return "; ".join(_problem(item, prefix) for item in error.errors(include_url=False))


def build(cls: type[T], values: Any, what: str, prefix: str = "") -> T:
    """``cls`` from a mapping of a user's settings, or a one-line ValueError naming every wrong field.

    ``what`` names a setting in the unknown-key message ("adapter setting"); ``prefix`` places the fields
    in a larger file (``"model."`` in a recipe).
    """
    if not isinstance(values, dict):
        where = f"{prefix.removesuffix('.')}: " if prefix else ""
        raise ValueError(f"{where}expected a mapping of {what}s, not {type(values).__name__} "
                         f"{values!r:.{_INPUT_CHARS}}")
    unknown = sorted(set(map(str, values)) - {spec.name for spec in dataclasses.fields(cls)})
    if unknown:
        # A key of spaces or line breaks is quoted, so that the message stays one readable line.
        names = [name if name.isprintable() and name.strip() == name and name else repr(name) for name in unknown]
        raise ValueError(f"unknown {what}(s): {', '.join(names)}")
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as error:
        raise ValueError(describe(error, prefix)) from None
