"""Tasks as (media, prompt, targets) examples, read from the formats users already have."""

from .audio import load_audio
from .examples import Example, load_image, parse_data_spec, read_dataset
from .video import load_video

__all__ = ["Example", "load_audio", "load_image", "load_video", "parse_data_spec", "read_dataset"]
