"""Tasks as (media, prompt, targets) examples, read from the formats users already have."""

from .examples import VQAExample, load_image, parse_data_spec, read_dataset

__all__ = ["VQAExample", "load_image", "parse_data_spec", "read_dataset"]
