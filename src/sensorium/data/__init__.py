"""Tasks as (media, prompt, targets) examples, read from the formats users already have."""

from .examples import Example, split_validation
from .formats import FORMATS, data_spec_forms, parse_data_spec, read_dataset, reader
from .jsonl import write_manifest

__all__ = ["FORMATS", "Example", "data_spec_forms", "parse_data_spec", "read_dataset", "reader", "split_validation",
           "write_manifest"]
