"""Tasks as (media, prompt, targets) examples, read from the formats users already have."""

from .examples import Example, load_image, parse_data_spec, read_dataset

__all__ = ["Example", "load_image", "parse_data_spec", "read_dataset"]
