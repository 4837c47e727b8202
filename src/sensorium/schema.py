"""Declared settings checked once: the adapter config and the recipe are pydantic dataclasses, and every
problem a user's file has is reported in one line that names each wrong field and why.

Field types say what is accepted (``StrictInt``: YAML's ``"3"`` is not a number of blocks, ``StrictBool``:
``"no"`` is not false); this module turns pydantic's errors into the house's one-line messages.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, TypeVar

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

# What each pydantic error type means, said after the field's name.
_PREDICATES = {
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
    "int_type": "must be a number", "int_parsing": "must be a number", "float_type": "must be a number",
    "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "int_from_float": "must be a whole number", "bool_type": "must be true or false",
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
    if error_type == "value_error":  # our own validators say the whole reason
        return f"{field}: {error['msg'].removeprefix('Value error, ')}"
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
