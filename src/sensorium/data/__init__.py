"""Tasks as (media, prompt, targets) examples, read from the formats users already have."""

from .examples import Example
from .formats import FORMATS, data_spec_forms, parse_data_spec, read_dataset, reader

__all__ = ["FORMATS", "Example", "data_spec_forms", "parse_data_spec", "read_dataset", "reader"]
