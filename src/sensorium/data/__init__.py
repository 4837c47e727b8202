"""Tasks as (media, prompt, targets) examples, read from the formats users already have."""

from .examples import Example, parse_data_spec, read_dataset

__all__ = ["Example", "parse_data_spec", "read_dataset"]
